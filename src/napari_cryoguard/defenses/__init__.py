"""Robust training: the one training loop, the defense registry and the defenses.

Public API
----------
``train(dataset_or_path, model="cb3d", defense="standard", *, ...) -> TrainResult``
    The one loop (:mod:`~napari_cryoguard.defenses.trainer`); ``Recipe``
    (:mod:`napari_cryoguard.recipe`, torch-free) holds the optimizer, schedule, split,
    early-stopping and robust-evaluation settings and their defaults. The training data
    and its split are :mod:`~napari_cryoguard.defenses.training_data`, the state file
    beside a checkpoint :mod:`~napari_cryoguard.defenses.state`; the ``cryoguard train``
    command is :mod:`napari_cryoguard.cli.train`.
``available_defenses()``, ``get_defense(name, **params)``, ``defense_params_class(name)``
    The registry (:mod:`~napari_cryoguard.defenses.base`).
``EventWriter``, ``read_events``
    The JSON-lines events a training process streams (:mod:`~napari_cryoguard.defenses.events`).

How to add a defense
--------------------
Create one module in this package, e.g. ``defenses/trades.py``; every module here
except ``base``, ``trainer``, ``training_data``, ``state``, ``events``,
``distributed`` and ``_private`` ones is
imported the first time the registry is used, so registering is all it takes:

.. code-block:: python

    from dataclasses import dataclass
    import torch.nn.functional as F
    from napari_cryoguard.defenses.base import Batch, Defense, register_defense, unwrap

    @dataclass
    class TradesParams:
        beta: float = 6.0          # defaults from the paper, cited in the docstring
        eps: float = 0.03

    def trades_loss(model, batch: Batch, params: TradesParams):
        \"\"\"Pure function: (loss tensor, {name: float}). Cite the paper's equation.\"\"\"
        plain = unwrap(model)                      # attacks run on the plain model,
        x_adv = ...                                # before the loss' forward pass,
        logits = model(batch.x)                    # which goes through ``model``
        ...
        return loss, {"ce": ..., "kl": ...}

    @register_defense("trades", TradesParams)
    class Trades(Defense):
        def loss(self, model, batch):
            return trades_loss(model, batch, self.params)

Rules: take the device from ``batch.x`` (never ``.cuda()``); labels ``batch.y`` are -1
for unlabelled samples (use ``masked_cross_entropy``); ``batch.index`` addresses
per-sample state of length ``trainer.num_samples``, allocated in ``setup(trainer)``,
updated in the loss or in ``on_epoch_start/on_epoch_end(trainer)`` (combine DDP ranks
with ``trainer.all_reduce_tensor``), saved by ``state_tensors()`` in the checkpoint
as ``extra.defense.<key>`` and restored by ``load_state_tensors`` on resume (e.g. IMA
margins). Attacks must not change the model's mode or weights, and should take the
gradient w.r.t. the input (``torch.autograd.grad``); the loop clears any parameter
gradients they leave before its backward pass. Set ``needs_forward_all = True`` for a
defense that needs the autoencoder's ``model.forward_all(x) -> (logits, recon,
code)``. Add tests under ``tests/defenses/``.
"""

from __future__ import annotations

from napari_cryoguard.defenses.base import (
    Batch,
    Defense,
    ModelHandle,
    available_defenses,
    defense_params_class,
    get_defense,
    make_defense_params,
    masked_cross_entropy,
    register_defense,
    unwrap,
)
from napari_cryoguard.defenses.events import EventWriter, read_events
from napari_cryoguard.defenses.trainer import TrainResult, train
from napari_cryoguard.recipe import Recipe

__all__ = [
    "Batch",
    "Defense",
    "EventWriter",
    "ModelHandle",
    "Recipe",
    "TrainResult",
    "available_defenses",
    "defense_params_class",
    "get_defense",
    "make_defense_params",
    "masked_cross_entropy",
    "read_events",
    "register_defense",
    "train",
    "unwrap",
]
