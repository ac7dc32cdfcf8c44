"""Synthetic fundus data for tests, the demo and the benchmarks; production imports none of it.

- fundus.py: one case (`generate_case`): anatomy, vessels and the disease's signs, painted
  with canvas.py's primitives, lesions.py's disease painters and clinical_text.py's text;
- delivery.py: a night as a site delivers it (`write_dataset`): JPEG and DICOM OP files,
  manifest.csv, and the masks beside it;
- examples.py: such a delivery read back as training examples (`read_examples`,
  `synthetic_split`), for runs that skip intake;
- bad_files.py: the files intake must reject (`write_bad_files`).
"""
