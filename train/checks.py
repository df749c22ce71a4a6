"""Start-up checks of the trainer: the cache must be sound, of a known schema, and tokenised as the policy would.

Token-level WSPO pairs the weak ratio of token t with the policy's log-prob of the same token t, so the cache's
tokenisation must be exactly the policy tokenizer's. Each refusal says what differs. The schema version was
checked when the cache was opened (`Cache.open`). Soundness is checked at `train.verify_cache`'s level: by
default sizes and the manifest always, sha256 of a sample of shards and of any file modified after the manifest
(`w2s.cache.store`), so that start-up does not grow with the cache; the reader checks row ids as it loads shards.
"""

from __future__ import annotations

from transformers import PreTrainedTokenizerBase

from w2s.cache.data import Row, encode_rows, load_rows
from w2s.cache.provenance import tokenizer_fingerprint
from w2s.cache.store import Cache, VerifyLevel
from w2s.errors import CacheMismatch, DataError


def check_cache(
    cache: Cache,
    tokenizer: PreTrainedTokenizerBase,
    policy: str,
    sample_rows: int,
    level: VerifyLevel = "full",
) -> None:
    """Verifies the cache at `level`, then compares tokenizers.

    Args:
        cache: the opened cache.
        tokenizer: the policy's tokenizer.
        policy: the policy's path or hub id, for messages.
        sample_rows: rows to re-tokenise when the tokenizer hashes differ (0: trust the hash alone).
        level: how much of the cache to verify (`w2s.cache.store.Cache.verify`).

    Raises:
        CacheMismatch: naming the failed check, or the row and position where the tokenisations part.
    """
    problems = cache.verify(level)
    if problems:
        raise CacheMismatch(f"{cache.path}: the cache fails verification:\n  " + "\n  ".join(problems))
    if sample_rows and cache.provenance["tokenizer_sha256"] != tokenizer_fingerprint(tokenizer):
        # same ids may still come out (e.g. a re-saved tokenizer); re-tokenising decides, and names the difference
        retokenise_sample(cache, tokenizer, policy, sample_rows)


def encode_source_rows(cache: Cache, tokenizer: PreTrainedTokenizerBase, policy: str, count: int) -> list[Row]:
    """The first `count` rows of the cache's dataset, encoded by `tokenizer` with the cache's recorded settings."""
    prov, config = cache.provenance, cache.manifest["config"]
    source = prov["dataset"]["source"]
    try:
        dataset, _ = load_rows(source, prov["dataset"]["split"])
        sample = dataset.select(range(min(count, len(dataset))))
        return encode_rows(
            sample,
            source,
            tokenizer,
            prov["dataset"]["fields"],
            config["max_len"],
            config["truncation"],
            config["use_chat_template"],
        )
    except DataError as err:
        raise CacheMismatch(
            f"the policy {policy} has a different tokenizer than the cache {cache.path} "
            f"(sha256 {tokenizer_fingerprint(tokenizer)[:12]}... vs {prov['tokenizer_sha256'][:12]}...), and its "
            f"dataset cannot be re-tokenised to compare: {err}"
        ) from err


def retokenise_sample(cache: Cache, tokenizer: PreTrainedTokenizerBase, policy: str, count: int) -> None:
    """Re-tokenises the first `count` rows of the cache's dataset with the policy tokenizer and compares ids."""
    source = cache.provenance["dataset"]["source"]
    for (row_id, cached), row in zip(cache.first_rows(count), encode_source_rows(cache, tokenizer, policy, count)):
        if cached != row.input_ids:
            at = next(
                (i for i, (a, b) in enumerate(zip(cached, row.input_ids)) if a != b),
                min(len(cached), len(row.input_ids)),
            )
            raise CacheMismatch(
                f"the policy {policy} tokenises row {row_id} of {source} differently from the cache {cache.path}: "
                f"first difference at token {at} (cache {cached[at : at + 3]}, policy {row.input_ids[at : at + 3]}); "
                "token-level WSPO needs the weak pair and the policy to share a tokenizer"
            )
