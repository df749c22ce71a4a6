"""The one log-prob module: next-token gather, padding, the chunked output layer against the plain computation
(values and gradients, every listed architecture, wrappers), and the choice of the plain path."""

import numpy as np
import peft
import pytest
import torch
import transformers

from w2s.heads import HEADS, Head, find_head
from w2s.logprobs import (
    LinearTargetLogprobs,
    head_logprobs,
    logprobs_of_targets,
    pad_right,
    response_logprobs,
    target_logprobs,
)


@pytest.fixture(autouse=True)
def plain_functional_linear(monkeypatch):
    """DeepSpeed's ZeRO-3 start-up replaces torch.nn.functional.linear for the rest of the process ("this will
    persist unless manually reset"), so after a ZeRO-3 test in the same session the plain reference path here
    would run DeepSpeed's version on a fake partitioned weight: every test here uses torch's own."""
    monkeypatch.setattr(torch.nn.functional, "linear", torch._C._nn.linear)


response_logps = logprobs_of_targets
VOCAB = 300
MODEL_TYPES = {
    "LlamaForCausalLM": "llama",
    "MistralForCausalLM": "mistral",
    "Qwen2ForCausalLM": "qwen2",
    "Qwen3ForCausalLM": "qwen3",
    "GemmaForCausalLM": "gemma",
    "Phi3ForCausalLM": "phi3",
    "Olmo2ForCausalLM": "olmo2",
    "Starcoder2ForCausalLM": "starcoder2",
    "SmolLM3ForCausalLM": "smollm3",
    "Gemma2ForCausalLM": "gemma2",
    "Gemma3ForCausalLM": "gemma3_text",
    "CohereForCausalLM": "cohere",
    "GraniteForCausalLM": "granite",
}
HEAD_SETTINGS = {"gemma2": {"final_logit_softcapping": 2.0}, "gemma3_text": {"final_logit_softcapping": 2.0}}
HEAD_SETTINGS["granite"] = {"logits_scaling": 4.0}


def tiny(class_name: str = "LlamaForCausalLM", **overrides) -> torch.nn.Module:
    """A random one-layer model of the class, with logits large enough for a soft cap or scale to matter."""
    model_type = MODEL_TYPES[class_name]
    settings = dict(
        vocab_size=VOCAB,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=1,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=8,
        max_position_embeddings=64,
        initializer_range=0.3,
        pad_token_id=0,
        **HEAD_SETTINGS.get(model_type, {}),
    )
    settings.update(overrides)
    torch.manual_seed(0)
    config = transformers.AutoConfig.for_model(model_type, **settings)
    return getattr(transformers, class_name)(config).float().eval()


def batch(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Three right-padded rows and the scored targets (the 'response': from position 4 on, padding excluded)."""
    generator = torch.Generator().manual_seed(seed)
    input_ids, mask = pad_right([torch.randint(1, VOCAB, (n,), generator=generator).tolist() for n in (14, 9, 12)])
    scored = mask[:, 1:].bool()  # [batch, seq-1]
    scored[:, :3] = False
    return input_ids, mask, scored


def plain(model, input_ids, mask, scored) -> torch.Tensor:
    """The reference: the model's own logits, a full float32 log-softmax, the gather."""
    logits = model(input_ids=input_ids, attention_mask=mask).logits
    return logprobs_of_targets(logits, input_ids).masked_fill(~scored, 0.0)


def values_and_grads(compute, model, weights: torch.Tensor) -> tuple[torch.Tensor, dict]:
    model.zero_grad(set_to_none=True)
    out = compute()
    (out * weights).sum().backward()  # an uneven upstream gradient, as the WSPO loss gives
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    return out.detach(), grads


def assert_same_values_and_grads(model, chunk: int = 5, atol: float = 1e-5) -> None:
    input_ids, mask, scored = batch()
    weights = torch.randn(scored.shape, generator=torch.Generator().manual_seed(1))
    got, got_grads = values_and_grads(lambda: target_logprobs(model, input_ids, mask, scored, chunk), model, weights)
    want, want_grads = values_and_grads(lambda: plain(model, input_ids, mask, scored), model, weights)
    torch.testing.assert_close(got, want, atol=atol, rtol=0)
    assert got_grads.keys() == want_grads.keys() and got_grads
    for name, grad in want_grads.items():
        torch.testing.assert_close(got_grads[name], grad, atol=atol, rtol=1e-4, msg=name)


def test_response_logps_gathers_next_token():
    logits = torch.log(torch.tensor([[[0.5, 0.5], [0.9, 0.1], [0.2, 0.8]]]))
    ids = torch.tensor([[0, 1, 1]])
    assert torch.allclose(response_logps(logits, ids), torch.log(torch.tensor([[0.5, 0.1]])))


def test_pad_right_pads_after_each_sequence():
    ids, mask = pad_right([[5, 6, 7], [8]], pad_id=2)
    assert ids.tolist() == [[5, 6, 7], [8, 2, 2]] and mask.tolist() == [[1, 1, 1], [1, 0, 0]]
    ids, _ = pad_right([np.array([1, 2], dtype=np.int32)])
    assert ids.dtype == torch.long


class Bigram(torch.nn.Module):
    """A causal LM whose next-token logits depend on the current token only (so padding cannot leak into them)."""

    def __init__(self, vocab: int = 7):
        super().__init__()
        torch.manual_seed(0)
        self.table = torch.nn.Embedding(vocab, vocab)

    def forward(self, input_ids, attention_mask=None):
        return type("Out", (), {"logits": self.table(input_ids)})()


@pytest.mark.parametrize("model", [Bigram(), tiny()], ids=["plain path", "chunked path"])
def test_batched_response_logprobs_equal_one_sequence_at_a_time(model):
    sequences, prompt_lens = [[1, 2, 3, 4, 5], [6, 1, 2], [3, 3, 3, 3]], [2, 1, 3]
    batched = response_logprobs(model, sequences, prompt_lens)
    for seq, prompt_len, got in zip(sequences, prompt_lens, batched):
        ids = torch.tensor([seq])
        alone = target_logprobs(model, ids, torch.ones_like(ids))[0, prompt_len - 1 :]
        full = torch.log_softmax(model(input_ids=ids).logits[0].float(), -1)
        by_hand = [full[t - 1, seq[t]].item() for t in range(prompt_len, len(seq))]
        assert got.dtype == np.float32 and len(got) == len(seq) - prompt_len
        np.testing.assert_allclose(got, alone.detach().numpy(), atol=1e-6)
        np.testing.assert_allclose(got, by_hand, atol=1e-6)


@pytest.mark.parametrize("class_name", sorted(HEADS))
def test_every_listed_head_matches_its_models_own_forward(class_name):
    assert class_name in MODEL_TYPES, f"{class_name} is in w2s.heads.HEADS but has no test here"
    model = tiny(class_name)
    head = find_head(model)
    assert head is not None and head.is_plain_linear()
    assert_same_values_and_grads(model)
    if (head.scale, head.softcap) != (1.0, None):  # the rule matters: without it the values differ
        input_ids, mask, scored = batch()
        hidden = torch.randn(6, model.config.hidden_size)
        targets = torch.randint(0, VOCAB, (6,))
        bare = head_logprobs(Head(head.module, VOCAB), hidden, targets)
        assert (head_logprobs(head, hidden, targets) - bare).abs().max() > 1e-3


@pytest.mark.parametrize("scale, softcap, bias", [(1.0, None, False), (0.7, None, True), (1.3, 1.5, True)])
def test_custom_function_passes_gradcheck_in_float64(scale, softcap, bias):
    generator = torch.Generator().manual_seed(0)
    hidden = torch.randn(7, 4, dtype=torch.float64, generator=generator, requires_grad=True)
    weight = torch.randn(11, 4, dtype=torch.float64, generator=generator, requires_grad=True)
    bias_ = torch.randn(11, dtype=torch.float64, generator=generator, requires_grad=True) if bias else None
    targets = torch.randint(0, 11, (7,), generator=generator)

    def fn(h, w, b):
        return LinearTargetLogprobs.apply(h, w, b, targets, scale, softcap, 3)  # 3 chunks: 3 + 3 + 1 rows

    assert torch.autograd.gradcheck(fn, (hidden, weight, bias_), eps=1e-6, atol=1e-7)


@pytest.mark.parametrize("scale, softcap", [(1.0, None), (0.5, 3.0)])
def test_custom_function_equals_log_softmax_and_gather(scale, softcap):
    generator = torch.Generator().manual_seed(0)
    hidden = torch.randn(37, 16, generator=generator, requires_grad=True)
    layer = torch.nn.Linear(16, 1000)
    targets = torch.randint(0, 1000, (37,), generator=generator)
    upstream = torch.randn(37, generator=generator)

    def grads(out):
        hidden.grad = layer.weight.grad = layer.bias.grad = None
        (out * upstream).sum().backward()
        return out.detach(), hidden.grad, layer.weight.grad, layer.bias.grad

    got = grads(head_logprobs(Head(layer, 1000, scale, softcap), hidden, targets, chunk=8))
    logits = layer(hidden).float() * scale
    logits = torch.tanh(logits / softcap) * softcap if softcap else logits
    want = grads(torch.log_softmax(logits, -1).gather(1, targets[:, None])[:, 0])
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


class OwnLlama(transformers.LlamaForCausalLM):
    """A subclass may change forward: not in HEADS by its own name, so it takes the plain path."""


def test_plain_path_is_chosen_when_the_output_layer_is_not_known():
    assert find_head(Bigram()) is None  # no Hugging Face output layer
    own = OwnLlama(tiny().config).eval()
    assert find_head(own) is None
    input_ids, mask, scored = batch()
    torch.testing.assert_close(target_logprobs(own, input_ids, mask, scored), plain(own, input_ids, mask, scored))


def test_wrapped_output_layers_run_the_layer_itself_chunk_by_chunk(monkeypatch):
    lora_head = peft.get_peft_model(tiny(), peft.LoraConfig(r=4, target_modules=["lm_head", "q_proj"]))
    head = find_head(lora_head)
    assert head is not None and not head.is_plain_linear()  # a LoRA layer: called, not re-implemented
    torch.nn.init.normal_(lora_head.base_model.model.lm_head.lora_B["default"].weight)  # adapters that matter
    assert_same_values_and_grads(lora_head)

    partitioned = tiny()  # ZeRO-3 leaves an empty placeholder weight, gathered only inside the layer's forward
    partitioned.lm_head.weight.ds_id = 0
    assert not find_head(partitioned).is_plain_linear()
    assert_same_values_and_grads(partitioned)

    def refuse(*args):
        raise AssertionError("the custom function must not run under autocast")

    monkeypatch.setattr(LinearTargetLogprobs, "apply", refuse)
    model = tiny()
    input_ids, mask, scored = batch()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got, want = target_logprobs(model, input_ids, mask, scored), plain(model, input_ids, mask, scored)
    torch.testing.assert_close(got, want, atol=5e-2, rtol=0)


class Engine(torch.nn.Module):
    """What the trainer passes: an object whose `.module` is the Hugging Face model (a DeepSpeed engine)."""

    def __init__(self, module):
        super().__init__()
        self.module = module

    def forward(self, **kwargs):
        return self.module(**kwargs)


def test_engine_peft_and_tied_embeddings():
    assert_same_values_and_grads(Engine(tiny()))
    tied = tiny(tie_word_embeddings=True)
    assert tied.lm_head.weight is tied.model.embed_tokens.weight
    assert_same_values_and_grads(tied)

    model = peft.get_peft_model(tiny(), peft.LoraConfig(r=4, target_modules=["q_proj", "v_proj"]))
    for name, param in model.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(param)  # nonzero adapters, so that on and off differ
    input_ids, mask, scored = batch()
    on = target_logprobs(Engine(model), input_ids, mask, scored)
    with model.disable_adapter():
        off = target_logprobs(model, input_ids, mask, scored)
        torch.testing.assert_close(off, plain(model, input_ids, mask, scored), atol=1e-5, rtol=0)
    torch.testing.assert_close(on, plain(model, input_ids, mask, scored), atol=1e-5, rtol=0)
    assert (on - off).abs().max() > 1e-3
    assert_same_values_and_grads(model)


def test_bfloat16_model_agrees_with_its_plain_path():
    model = tiny().to(torch.bfloat16)
    input_ids, mask, scored = batch()
    with torch.no_grad():
        got, want = target_logprobs(model, input_ids, mask, scored, 4), plain(model, input_ids, mask, scored)
    assert got.dtype == torch.float32
    torch.testing.assert_close(got, want, atol=5e-2, rtol=0)  # the same bfloat16 logits, rounded per chunk
