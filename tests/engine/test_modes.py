"""``eval_mode``: evaluation mode inside, each submodule's own mode back afterwards."""

from __future__ import annotations

from torch import nn

from tracer_cli.engine.modes import eval_mode


def test_eval_mode_restores_each_submodule_including_frozen_batchnorm():
    model = nn.Sequential(nn.Linear(2, 2), nn.BatchNorm1d(2))
    model.train()
    model[1].eval()  # model.freeze_bn_stats: BatchNorm stays in eval mode while training
    head = nn.Linear(2, 1)
    with eval_mode(model, None, head):
        assert not any(m.training for m in [*model.modules(), head])
    assert model.training and model[0].training and not model[1].training
    assert head.training
