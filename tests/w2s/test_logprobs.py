"""The one log-prob module: next-token gather, padding, and agreement between its batched and per-row forms."""

import numpy as np
import torch

from w2s.logprobs import logprobs_of_targets, pad_right, response_logprobs, target_logprobs

response_logps = logprobs_of_targets


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


def test_batched_response_logprobs_equal_one_sequence_at_a_time():
    model = Bigram()
    sequences, prompt_lens = [[1, 2, 3, 4, 5], [6, 1, 2], [3, 3, 3, 3]], [2, 1, 3]
    batched = response_logprobs(model, sequences, prompt_lens)
    for seq, prompt_len, got in zip(sequences, prompt_lens, batched):
        ids = torch.tensor([seq])
        alone = target_logprobs(model, ids, torch.ones_like(ids))[0, prompt_len - 1 :]
        full = torch.log_softmax(model(ids).logits[0].float(), -1)
        by_hand = [full[t - 1, seq[t]].item() for t in range(prompt_len, len(seq))]
        assert got.dtype == np.float32 and len(got) == len(seq) - prompt_len
        np.testing.assert_allclose(got, alone.detach().numpy(), atol=1e-6)
        np.testing.assert_allclose(got, by_hand, atol=1e-6)
