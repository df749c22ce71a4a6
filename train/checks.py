"""Start-up checks of the trainer: the cache must be sound, of a known schema, and tokenised as the policy would.

Token-level WSPO pairs the weak ratio of token t with the policy's log-prob of the same token t, so the cache's
tokenisation must be exactly the policy tokenizer's. Each refusal says what differs.
"""

from __future__ import annotations

from pathlib import Path

from transformers import PreTrainedTokenizerBase

from w2s.cache.data import DataError, encode_rows, load_rows
from w2s.cache.manifest import CacheMismatch, read_manifest, tokenizer_fingerprint, verify_cache
from w2s.cache.store import read_parquet, read_zarr


def check_cache(cache_dir: str | Path, tokenizer: PreTrainedTokenizerBase, policy: str, sample_rows: int) -> dict:
    """Verifies schema and checksums, then compares tokenizers; returns the manifest.

    Raises:
        CacheMismatch: naming the failed check, or the row and position where the tokenisations part.
    """
    manifest = read_manifest(cache_dir)
    problems = verify_cache(cache_dir)
    if problems:
        raise CacheMismatch(f"{cache_dir}: the cache fails verification:\n  " + "\n  ".join(problems))
    recorded = manifest["provenance"]["tokenizer_sha256"]
    if sample_rows and recorded != tokenizer_fingerprint(tokenizer):
        # same ids may still come out (e.g. a re-saved tokenizer); re-tokenising decides, and names the difference
        retokenise_sample(cache_dir, manifest, tokenizer, policy, sample_rows)
    return manifest


def _cached_rows(cache_dir: Path, manifest: dict, count: int) -> list[tuple[int, list[int]]]:
    """(row_id, input_ids) of the first `count` rows, read from whichever store the cache has."""
    rows: list[tuple[int, list[int]]] = []
    for shard in manifest["shards"]:
        fmt = "parquet" if "parquet" in shard["files"] else "zarr"
        data = (read_parquet if fmt == "parquet" else read_zarr)(Path(cache_dir) / shard["files"][fmt]["name"])
        for i in range(data.num_rows):
            rows.append((int(data.row_id[i]), data.input_ids[data.input_offsets[i] : data.input_offsets[i + 1]].tolist()))
            if len(rows) == count:
                return rows
    return rows


def retokenise_sample(cache_dir: str | Path, manifest: dict, tokenizer: PreTrainedTokenizerBase, policy: str, count: int) -> None:
    """Re-tokenises the first `count` rows of the cache's dataset with the policy tokenizer and compares ids."""
    prov, config = manifest["provenance"], manifest["config"]
    source = prov["dataset"]["source"]
    try:
        dataset, _ = load_rows(source, prov["dataset"]["split"])
        encoded = encode_rows(dataset.select(range(min(count, len(dataset)))), source, tokenizer, prov["dataset"]["fields"],
                              config["max_len"], config["truncation"], config["use_chat_template"])
    except DataError as err:
        raise CacheMismatch(
            f"the policy {policy} has a different tokenizer than the cache {cache_dir} "
            f"(sha256 {tokenizer_fingerprint(tokenizer)[:12]}... vs {prov['tokenizer_sha256'][:12]}...), and its "
            f"dataset cannot be re-tokenised to compare: {err}"
        ) from err
    for (row_id, cached), row in zip(_cached_rows(Path(cache_dir), manifest, count), encoded):
        if cached != row.input_ids:
            at = next((i for i, (a, b) in enumerate(zip(cached, row.input_ids)) if a != b), min(len(cached), len(row.input_ids)))
            raise CacheMismatch(
                f"the policy {policy} tokenises row {row_id} of {source} differently from the cache {cache_dir}: "
                f"first difference at token {at} (cache {cached[at:at + 3]}, policy {row.input_ids[at:at + 3]}); "
                "token-level WSPO needs the weak pair and the policy to share a tokenizer"
            )
