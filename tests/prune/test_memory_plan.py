"""The sequential pruner's memory plan bounds what it really allocates.

``Budget`` checks are only worth something if the plan they check is an upper bound: here the
peak of torch's CPU allocations during a whole run (profiler, as in tests/test_budget.py) is
compared with the plan the run checked, for the criteria with the largest workspaces.
"""

import pytest
import torch

transformers = pytest.importorskip("transformers")

from sketchprune import Budget  # noqa: E402
from sketchprune.prune import prune_model  # noqa: E402
from sketchprune.prune import sequential  # noqa: E402
from sketchprune.prune.measure import _cpu_activation_peak  # noqa: E402


def _model():
    cfg = transformers.LlamaConfig(hidden_size=256, intermediate_size=688, num_attention_heads=8,
                                   num_key_value_heads=8, num_hidden_layers=2, vocab_size=500,
                                   max_position_embeddings=512)
    torch.manual_seed(0)
    return transformers.LlamaForCausalLM(cfg).to(torch.bfloat16).eval()


@pytest.mark.parametrize("criterion, extra", [
    ("greedy", {}), ("sigma", {}), ("head-similarity", {}),
    ("greedy", {"refit_target": "dense"}), ("sigma", {"recovery": True}),
    ("sigma", {"recon": "block", "recon_epochs": 1}),
])
def test_peak_allocation_within_the_checked_plan(criterion, extra, monkeypatch):
    model = _model()
    g = torch.Generator().manual_seed(1)
    batches = [{"input_ids": torch.randint(0, 500, (1, 256), generator=g)} for _ in range(8)]
    plans = []
    check = sequential._Pruner.check_budget

    def spy(self, first, last):
        plans.append(self.memory_plan())
        return check(self, first, last)

    monkeypatch.setattr(sequential._Pruner, "check_budget", spy)
    peak, how = _cpu_activation_peak(lambda: prune_model(model, batches, sparsity=0.2, criterion=criterion,
                                                         reconstruct=True, budget=Budget("1GiB"), progress=False,
                                                         **extra))
    if peak is None:
        pytest.skip(how)
    assert len(plans) == 1
    host, dev = plans[0]
    planned = sum(host.values()) + sum(dev.values())   # what a CPU run is checked against
    assert peak <= planned, (f"{criterion}: peak allocation {peak / 2**20:.1f} MiB above the checked plan "
                             f"{planned / 2**20:.1f} MiB ({ {k: round(v / 2**20, 1) for k, v in {**host, **dev}.items()} })")
    # and the plan is not wildly pessimistic (it would refuse runs that fit); block training's
    # share (gradients, Adam moments, copies, backward activations) is planned more coarsely
    assert planned <= (3.0 if "recon" in extra else 2.5) * peak
