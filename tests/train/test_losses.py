import pytest
import torch

from w2s.train.losses import wspo_loss


def reference_loss(policy, ref, weak, mask, gamma):
    """Straight from the formula, one sequence at a time, in plain Python."""
    per_sequence = []
    for b in range(policy.shape[0]):
        terms = [(gamma * (policy[b, t] - ref[b, t]) - weak[b, t]) ** 2 for t in range(policy.shape[1]) if mask[b, t]]
        per_sequence.append(sum(terms) / len(terms))
    return sum(per_sequence) / len(per_sequence)


def test_matches_the_formula_with_ragged_masks():
    torch.manual_seed(0)
    policy, ref, weak = (
        torch.randn(3, 7, dtype=torch.float64),
        torch.randn(3, 7, dtype=torch.float64),
        torch.randn(3, 7, dtype=torch.float64),
    )
    mask = torch.tensor([[0, 0, 1, 1, 1, 0, 0], [0, 1, 1, 1, 1, 1, 1], [0, 0, 0, 0, 0, 0, 1]], dtype=torch.float64)
    loss, metrics = wspo_loss(policy, ref, weak, mask, gamma=0.3)
    assert float(loss) == pytest.approx(float(reference_loss(policy, ref, weak, mask, 0.3)), rel=1e-12)
    assert metrics["tokens"] == 10


def test_per_sequence_mean_is_not_a_token_mean():
    # one long and one short sequence: the per-sequence average weights them equally
    policy = torch.zeros(2, 4)
    weak = torch.tensor([[1.0, 1.0, 1.0, 1.0], [3.0, 0.0, 0.0, 0.0]])
    mask = torch.tensor([[1.0, 1.0, 1.0, 1.0], [1.0, 0.0, 0.0, 0.0]])
    loss, _ = wspo_loss(policy, policy, weak, mask, gamma=1.0)
    assert float(loss) == pytest.approx((1.0 + 9.0) / 2)


def test_gradient_pushes_strong_ratio_toward_weak_over_gamma():
    policy = torch.zeros(1, 3, requires_grad=True)
    weak = torch.tensor([[0.2, -0.4, 0.0]])
    loss, _ = wspo_loss(policy, torch.zeros(1, 3), weak, torch.ones(1, 3), gamma=0.1)
    loss.backward()
    # d/dp (g p - w)^2 / n = 2 g (g p - w) / n ; at p=0: -2 g w / n
    assert torch.allclose(policy.grad, -2 * 0.1 * weak / 3)
    optimum = weak / 0.1
    zero, _ = wspo_loss(optimum, torch.zeros(1, 3), weak, torch.ones(1, 3), gamma=0.1)
    assert float(zero) == pytest.approx(0.0, abs=1e-12)


def test_metrics_correlation_and_means():
    policy = torch.tensor([[0.0, 1.0, 2.0, 3.0]])
    weak = torch.tensor([[0.0, 2.0, 4.0, 6.0]])
    _, metrics = wspo_loss(policy, torch.zeros_like(policy), weak, torch.tensor([[0.0, 1.0, 1.0, 1.0]]), gamma=1.0)
    assert metrics["ratio_correlation"] == pytest.approx(1.0)
    assert metrics["strong_ratio_mean"] == pytest.approx(2.0) and metrics["weak_ratio_mean"] == pytest.approx(4.0)


def test_empty_response_is_refused():
    with pytest.raises(ValueError, match="no response tokens"):
        wspo_loss(torch.zeros(1, 2), torch.zeros(1, 2), torch.zeros(1, 2), torch.zeros(1, 2), gamma=0.1)


def test_sequence_wspo_golden_values():
    """SequenceWSPO, worked by hand: row 0 has response tokens 1-2, row 1 tokens 0-2.
    Row 0: strong ratios (0.5 - 0.1, -0.2 - 0.2) = (0.4, -0.4), mean 0.0; weak (1.0, 3.0), mean 2.0;
           (gamma * 0.0 - 2.0)^2 = 4.0.
    Row 1: strong ratios (1.0, 1.0, 1.0), mean 1.0; weak (0.0, 0.6, 0.0), mean 0.2; (0.5 * 1.0 - 0.2)^2 = 0.09.
    Loss: (4.0 + 0.09) / 2 = 2.045."""
    from w2s.train.losses import SequenceWSPO

    policy = torch.tensor([[9.0, 0.5, -0.2], [1.0, 1.0, 1.0]], dtype=torch.float64)
    ref = torch.tensor([[0.0, 0.1, 0.2], [0.0, 0.0, 0.0]], dtype=torch.float64)
    weak = torch.tensor([[7.0, 1.0, 3.0], [0.0, 0.6, 0.0]], dtype=torch.float64)
    mask = torch.tensor([[0.0, 1.0, 1.0], [1.0, 1.0, 1.0]], dtype=torch.float64)
    loss, metrics = SequenceWSPO(gamma=0.5)(policy, ref, {"weak_log_ratio": weak, "mask": mask})
    assert float(loss) == pytest.approx(2.045, abs=1e-12) and metrics["tokens"] == 5
    token_level, _ = wspo_loss(policy, ref, weak, mask, gamma=0.5)
    assert float(token_level) != pytest.approx(2.045)  # a different loss, not WSPO renamed


def test_the_wspo_component_is_the_loss_functions():
    """`WSPO` (what train.loss names by default) computes `wspo_loss`, and `wspo_chunk_loss` for a chunked batch."""
    from w2s.train.losses import WSPO, wspo_chunk_loss

    torch.manual_seed(0)
    policy, ref, weak = (torch.randn(2, 5, dtype=torch.float64) for _ in range(3))
    mask = torch.tensor([[0, 1, 1, 1, 1], [0, 0, 1, 1, 0]], dtype=torch.float64)
    loss, _ = WSPO(gamma=0.3)(policy, ref, {"weak_log_ratio": weak, "mask": mask})
    assert float(loss) == float(wspo_loss(policy, ref, weak, mask, 0.3)[0])
    index = torch.tensor([[-1, 0, 0, 1, 1], [-1, -1, 0, 1, -1]])
    sums = torch.tensor([[0.5, -1.0], [0.2, 0.3]], dtype=torch.float64)
    batch = {"weak_log_ratio": weak, "mask": mask, "chunk_index": index, "weak_chunk_sums": sums}
    chunked, _ = WSPO(gamma=0.3)(policy, ref, batch)
    assert float(chunked) == float(wspo_chunk_loss(policy, ref, sums, index, mask, 0.3)[0])
