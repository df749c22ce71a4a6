"""How often cross-tokenizer chunks are longer than one token (a script, not a test).

    .venv/bin/python benchmarks/align_share.py                       # 200 sentences, strong Gemma-3, weak SmolLM2
    .venv/bin/python benchmarks/align_share.py --sentences 1000 --seed 3

Random English-like sentences (words, numbers, commas, apostrophes, hyphens) are aligned with `w2s.align`, the
strong side tokenised by Gemma-3-270M's tokenizer and the weak side by SmolLM2-135M-Instruct's. Printed: the share
of response characters that land in chunks longer than one strong token (where the strong model is trained on a
chunk's summed log-ratio rather than a token's own), the same for the weak side, and the commonest such chunks.
The tokenizers are read from the GGUF files of the `real` extra (`w2s.world.gguf`) once and kept under
`--tokenizers` (default /tmp/w2s-tokenizers/{smollm2,gemma}); reading Gemma's GGUF takes about 30 s.
"""

from __future__ import annotations

import argparse
import os
import random
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from w2s.align import chunk_share  # noqa: E402

WORDS = (
    "the a of and to in is was for on that with as by at from it this be are have not but had his they you were "
    "her she which or we an one all their there been has more when will would who so if no out up what about into "
    "than them can only other new some could time these two may first then do any like my now over such our man "
    "me even most made after also did many before must through back years where much your way well down should "
    "because each just those people how too little state good very make world still own see men work long get "
    "here between both life being under never day same another know while last might us great old year off come "
    "since against go came right used take three himself few house use during without again place american around "
    "however home small found thought went say part once general high upon school every does got united left "
    "number course war until always away something fact though water less public put think almost hand enough far "
    "took head yet government system better set told nothing night end why called didn't eyes find going look "
    "asked later knew point next program city business give group toward young days let room president side social "
    "given present several order national possible rather second face per among form important often things "
    "looking early white case john become large big need four within felt children along saw best church ever "
    "least power development light thing seemed family interest want members mind country area others although "
    "turned done open god service certain kind problem began different door thus help sense means whole matter "
    "perhaps itself it's york times law human line above name example action company hands local show whether five "
    "history gave today either act feet across taken past quite anything seen having death week experience "
    "well-known state-of-the-art tokenizer alignment weak-to-strong preference optimization"
).split()


def sentence(rng: random.Random) -> str:
    """One English-like sentence: 6 to 20 words, now and then a number, a comma, a closing mark."""
    words = []
    for _ in range(rng.randint(6, 20)):
        roll = rng.random()
        if roll < 0.06:
            words.append(str(rng.choice([rng.randint(1900, 2030), rng.randint(2, 99), rng.randint(100, 99999)])))
        elif roll < 0.08:
            words.append(f"{rng.randint(0, 99)}.{rng.randint(0, 99):02d}%")
        else:
            words.append(rng.choice(WORDS))
        if rng.random() < 0.08:
            words[-1] += ","
    words[0] = words[0][:1].upper() + words[0][1:]
    return " ".join(words) + rng.choice([".", ".", ".", "?", "!", ":"])


def tokenizers(folder: Path):
    """(Gemma-3's, SmolLM2's) tokenizers, read from the `real` extra's GGUF files the first time."""
    from transformers import AutoTokenizer

    from w2s.world import gguf

    for name in ("gemma", "smollm2"):
        if not (folder / name / "tokenizer.json").is_file():
            source = gguf.smollm2_gguf() if name == "smollm2" else gguf.gemma_gguf(folder / "gguf")
            tokenizer = AutoTokenizer.from_pretrained(str(source.path.parent), gguf_file=source.path.name)
            tokenizer.save_pretrained(folder / name)
    return tuple(AutoTokenizer.from_pretrained(str(folder / name)) for name in ("gemma", "smollm2"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sentences", type=int, default=200)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--tokenizers", type=Path, default=Path("/tmp/w2s-tokenizers"))
    args = parser.parse_args()
    strong, weak = tokenizers(args.tokenizers)
    rng = random.Random(args.seed)
    texts = [sentence(rng) for _ in range(args.sentences)]
    began = time.perf_counter()
    result = chunk_share(strong, weak, texts)
    seconds = time.perf_counter() - began
    totals = result["totals"]
    print(f"{len(texts)} sentences (seed {args.seed}), {totals['strong']} characters, {totals['chunks']} chunks")
    print(f"  e.g. {texts[0]!r}")
    for side, name in (("strong", "Gemma-3 (strong)"), ("weak", "SmolLM2 (weak)")):
        share = totals[f"{side}_multi"] / totals[side]
        print(f"share of characters in chunks of more than one {name} token: {share:.2%}")
    common = [f"{text!r} x{n}" for (side, text), n in result["multi"].most_common() if side == "strong"][:10]
    print("commonest such strong chunks:", ", ".join(common) or "none")
    print(f"alignment time: {1000 * seconds / len(texts):.2f} ms per sentence (both encodes, the walk)")


if __name__ == "__main__":
    main()
