"""Commands print their own progress, not every library's: no "Loading weights" bar per model, no DeepSpeed
accelerator banner on a machine without an accelerator (W2S_VERBOSE=1 brings the bars back)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from transformers import LlamaConfig, LlamaForCausalLM

SCRIPT = """
import sys
from w2s.errors import run_as_command

def load():
    import deepspeed  # noqa: F401
    from w2s.models import load_causal_lm
    load_causal_lm("policy", sys.argv[1])
    from transformers.utils.logging import tqdm  # the bar transformers draws per load ("Loading weights")

    for _ in tqdm(range(3), desc="Loading weights"):
        pass
    return 0

sys.exit(run_as_command("w2s test", load))
"""


@pytest.mark.skipif(any(Path("/dev").glob("nvidia[0-9]*")), reason="DeepSpeed's banner is only silenced without a GPU")
def test_loading_a_model_and_deepspeed_print_nothing_unless_verbose(tmp_path):
    config = LlamaConfig(vocab_size=16, hidden_size=8, intermediate_size=16, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=2)  # fmt: skip
    LlamaForCausalLM(config).save_pretrained(tmp_path / "model")
    env = {k: v for k, v in os.environ.items() if k not in ("DS_ACCELERATOR", "W2S_VERBOSE", "TQDM_DISABLE")}

    def stderr(**extra: str) -> str:
        run = subprocess.run([sys.executable, "-c", SCRIPT, str(tmp_path / "model")], env={**env, **extra},
                             capture_output=True, text=True, timeout=300)  # fmt: skip
        assert run.returncode == 0, run.stderr
        return run.stderr

    quiet = stderr()
    assert "Loading weights" not in quiet and "Setting accelerator" not in quiet, quiet
    assert "Loading weights" in stderr(W2S_VERBOSE="1")  # the check can fail: the bar is there when asked for
