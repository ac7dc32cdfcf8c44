"""An offline byte-level BPE tokenizer for the tiny preset.

No model hub is reachable, so the tiny preset trains its own tokenizer in code. It carries the
Llama 3 special tokens that MllamaProcessor and the prompt templates rely on, in Llama's order,
and puts ``<|image|>`` right after the text vocabulary, as Llama 3.2 Vision does. No
post-processor: MllamaProcessor writes ``<|image|><|begin_of_text|>`` into the text itself.
"""

from __future__ import annotations

from collections.abc import Sequence

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

__all__ = ["IMAGE_TOKEN", "SPECIAL_TOKENS", "build_tiny_tokenizer"]

IMAGE_TOKEN = "<|image|>"
# Index in this tuple = token id (bos 0, eos 1, pad 2), matching the tiny preset's text config.
SPECIAL_TOKENS: tuple[str, ...] = (
    "<|begin_of_text|>",
    "<|end_of_text|>",
    "<|finetune_right_pad_id|>",
    "<|python_tag|>",
    "<|eot_id|>",
    "<|start_header_id|>",
    "<|end_header_id|>",
)

_CORPUS = """
Question: is the disease in this fundus photograph acquired or inherited? Answer: acquired
Question: is the disease in this fundus photograph acquired or inherited? Answer: inherited
Is the retinal disease in this fundus photograph normal, diabetic retinopathy, glaucoma,
age-related macular degeneration, AMD, retinitis pigmentosa, Stargardt disease, Best disease?
Answer with the diagnosis only. The answer is healthy, normal retina, no disease.
Clinical notes: age 54, sex female, history of type 2 diabetes mellitus and hypertension.
Clinical notes: age 12, sex male, family history of night blindness, autosomal recessive.
Clinical notes: age 67, sex male, history of elevated intraocular pressure, cup to disc ratio.
Patient age, sex, medical history, family history, symptoms, visual acuity, onset, progression.
Findings: microaneurysms, haemorrhages, hard exudates, cotton wool spots, neovascularisation,
drusen, geographic atrophy, bone spicule pigmentation, attenuated arterioles, waxy pallor,
vitelliform lesion, flecks, macular oedema, optic disc cupping, optic nerve, vessels, fovea.
Autosomal dominant, autosomal recessive, X-linked, mitochondrial, genetic testing, mutation,
ABCA4, BEST1, RHO, USH2A, RPGR. Acquired disease: diabetes, hypertension, glaucoma, ageing.
Inherited retinal dystrophy, cone rod dystrophy, choroideremia, Usher syndrome, macular dystrophy.
Left eye, right eye, both eyes, OD, OS, OU. Years, months, weeks. 0 1 2 3 4 5 6 7 8 9 10 20 30 40.
The fundus photograph shows the retina, the optic disc, the macula and the retinal vessels.
"""


def build_tiny_tokenizer(
    extra_text: Sequence[str] = (), *, vocab_size: int = 512
) -> PreTrainedTokenizerFast:
    """Train the tiny preset's tokenizer: exactly ``vocab_size`` text tokens plus ``<|image|>``.

    ``extra_text`` (e.g. the configured labels) joins the built-in corpus so those words get
    their own merges. Byte-level BPE still encodes any text, merges or not.
    """
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    lines = [*_CORPUS.strip().splitlines(), *extra_text]
    # Repeating the corpus makes every pair frequent enough to reach the target size.
    tokenizer.train_from_iterator(lines * 4, trainer)
    if tokenizer.get_vocab_size() != vocab_size:
        raise RuntimeError(
            f"the tiny tokenizer reached {tokenizer.get_vocab_size()} tokens, not {vocab_size}"
        )
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        bos_token=SPECIAL_TOKENS[0],
        eos_token=SPECIAL_TOKENS[1],
        pad_token=SPECIAL_TOKENS[2],
        padding_side="left",
    )
    fast.add_special_tokens({"additional_special_tokens": [IMAGE_TOKEN]})
    return fast
