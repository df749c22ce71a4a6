"""Start-up checks of the trainer: the cache must be sound, of a known schema, tokenised as the policy would, and
(online) scored by the weak pair that is loaded again.

Token-level WSPO pairs the weak ratio of token t with the policy's log-prob of the same token t, so the cache's
tokenizer must be exactly the policy's: the fingerprints (`w2s.provenance.tokenizer_fingerprint`: vocabulary,
special and added tokens, add_bos/add_eos, chat template) must be equal, and a refusal says which part differs. A
cross-tokenizer cache stores the strong model's ids (`w2s.schemas.cache`): there the policy's tokenizer must be the
cache's STRONG tokenizer (its copy `<cache>/strong_tokenizer`), and the weak pair's is refused like any other.
The schema version was checked when the cache was opened (`Cache.open`). Soundness is checked at
`train.verify_cache`'s level: by default sizes and the manifest always, sha256 of a sample of shards and of any file
modified after the manifest (`w2s.cache.store`), so that start-up does not grow with the cache; the reader checks
row ids as it loads shards.
"""

from __future__ import annotations

import hashlib

from transformers import PreTrainedTokenizerBase

from w2s.cache.portable import STRONG_TOKENIZER_DIR, TOKENIZER_DIR, cache_strong_tokenizer
from w2s.cache.store import Cache, VerifyLevel
from w2s.data import encode_rows, load_rows
from w2s.errors import CacheMismatch, UserError
from w2s.models import ModelError, check_model_path
from w2s.provenance import model_fingerprint, tokenizer_fingerprint, tokenizer_parts

WEAK_ROLES = ("weak_base", "weak_aligned")


def check_cache(
    cache: Cache,
    tokenizer: PreTrainedTokenizerBase,
    policy: str,
    sample_rows: int,
    level: VerifyLevel = "full",
) -> None:
    """Verifies the cache at `level`, then refuses a policy whose tokenizer is not the cache's.

    Args:
        cache: the opened cache.
        tokenizer: the policy's tokenizer.
        policy: the policy's path or hub id, for messages.
        sample_rows: rows to re-tokenise, when the tokenizers differ, to show where the ids part (0: none).
        level: how much of the cache to verify (`w2s.cache.store.Cache.verify`).

    Raises:
        CacheMismatch: naming the failed check, or the policy and which part of its tokenizer differs.
    """
    problems = cache.verify(level)
    if problems:
        raise CacheMismatch(f"{cache.path}: the cache fails verification:\n  " + "\n  ".join(problems))
    if stored_tokenizer_sha(cache) == tokenizer_fingerprint(tokenizer):
        return
    where = first_difference(cache, tokenizer, sample_rows) if sample_rows else None
    if cache.provenance.get("cross_tokenizer"):
        raise CacheMismatch(
            f"the policy {policy} has a different tokenizer than the strong tokenizer of the cross-tokenizer cache "
            f"{cache.path}: {differing_parts(cache, tokenizer)}{f'; it {where}' if where else ''}; the cache stores "
            f"the strong model's token ids: use its strong tokenizer ({cache.path}/{STRONG_TOKENIZER_DIR}) for the "
            f"policy, or rebuild the cache with this policy as the strong model (strong_ref={policy})"
        )
    raise CacheMismatch(
        f"the policy {policy} has a different tokenizer than the cache {cache.path}: "
        f"{differing_parts(cache, tokenizer)}{f'; it {where}' if where else ''}; token-level WSPO needs the "
        f"policy to share the weak pair's tokenizer, chat template included: use the cache's tokenizer "
        f"({cache.path}/{TOKENIZER_DIR}) for the policy, or rebuild the cache with this policy's tokenizer "
        f"(strong_ref={policy})"
    )


def stored_tokenizer_sha(cache: Cache) -> str:
    """The fingerprint of the tokenizer of the ids the cache stores: the strong one in a cross-tokenizer cache,
    else the one tokenizer of the weak pair and the strong model."""
    provenance = cache.provenance
    return (
        provenance["strong_tokenizer_sha256"] if provenance.get("cross_tokenizer") else provenance["tokenizer_sha256"]
    )


def differing_parts(cache: Cache, tokenizer: PreTrainedTokenizerBase) -> str:
    """Which parts of `tokenizer` differ from the cache's (the strong one's, in a cross-tokenizer cache): compared
    part by part with the cache's own copy of that tokenizer when the copy is the one the manifest records, else as
    far as the manifest alone tells."""
    recorded = stored_tokenizer_sha(cache)
    try:
        theirs = cache_strong_tokenizer(cache)
    except (UserError, OSError):  # no readable copy, and the model's path is gone: the manifest alone must do
        theirs = None
    if theirs is not None and tokenizer_fingerprint(theirs) == recorded:
        ours, parts = tokenizer_parts(tokenizer), tokenizer_parts(theirs)
        return f"they differ in their {' and '.join(part for part in ours if ours[part] != parts[part])}"
    if legacy_fingerprint(tokenizer) == recorded:
        return (
            "the cache records an older kind of tokenizer fingerprint (made by an earlier w2s, without the chat "
            "template and special tokens), so it cannot be trusted to match"
        )
    # a cross-tokenizer cache records the weak pair's chat template, not the strong one's: no clue there
    template = None if cache.provenance.get("cross_tokenizer") else cache.provenance.get("chat_template")
    if template is not None and template != getattr(tokenizer, "chat_template", None):
        return "they differ in their chat template (the one the manifest records)"
    return "they differ in their vocabulary or special tokens (the cache's own copy of its tokenizer is missing)"


def legacy_fingerprint(tokenizer: PreTrainedTokenizerBase) -> str | None:
    """The fingerprint w2s recorded before it covered chat templates and special tokens (sha256 of tokenizer.json)."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    return hashlib.sha256(backend.to_str().encode()).hexdigest() if backend is not None else None


def first_difference(cache: Cache, tokenizer: PreTrainedTokenizerBase, count: int) -> str | None:
    """Where the policy's tokenizer first parts from the cache on the cache's first `count` rows, re-tokenised
    with the cache's recorded settings; None when they agree or the dataset cannot be read again."""
    prov, config = cache.provenance, cache.manifest["config"]
    source = prov["dataset"]["source"]
    try:
        dataset, _ = load_rows(source, prov["dataset"]["split"])
        sample = dataset.select(range(min(count, len(dataset))))
        rows = encode_rows(
            sample,
            source,
            tokenizer,
            prov["dataset"]["fields"],
            config["max_len"],
            config["truncation"],
            config["use_chat_template"],
        )
    except (UserError, OSError):  # the refusal stands on the fingerprints; this only adds where the ids part
        return None
    for (row_id, cached), row in zip(cache.first_rows(count), rows):
        if cached != row.input_ids:
            at = next(
                (i for i, (a, b) in enumerate(zip(cached, row.input_ids)) if a != b),
                min(len(cached), len(row.input_ids)),
            )
            return (
                f"tokenises row {row_id} of {source} differently from the cache: first difference at token {at} "
                f"(cache {cached[at : at + 3]}, policy {row.input_ids[at : at + 3]})"
            )
    return None


def check_weak_models(manifest: dict, cache_dir: str) -> None:
    """Online mode loads the weak pair again from the paths the manifest records: refuses a model whose config or
    weights changed since the cache was built, naming its role and path (its log-ratios would not be the cache's).

    Raises:
        ModelError: a recorded model that is no longer there.
        CacheMismatch: a model whose config or weights fingerprint differs from the manifest's.
    """
    for role in WEAK_ROLES:
        recorded = manifest["provenance"]["models"][role]
        path = recorded["name_or_path"]
        check_model_path(role, path)
        try:
            current = model_fingerprint(path)
        except Exception as err:  # the hub client raises many types (offline, unknown repo): one cause
            raise ModelError(f"the {role} model {path}: not found ({' '.join(str(err).split())[:200]})") from err
        changed = [what for what in ("config", "weights") if current[f"{what}_sha256"] != recorded[f"{what}_sha256"]]
        if changed:
            raise CacheMismatch(
                f"the {role} model at {path} has changed since the cache {cache_dir} was built (its "
                f"{' and '.join(changed)} differ from the manifest's): online training would pair the policy with "
                "other weak log-ratios than the cache's; restore that model or rebuild the cache"
            )
