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
Create one module in this package, e.g. ``defenses/mydefense.py``; every module here
except the infrastructure (``base``, ``trainer``, ``training_data``, ``state``,
``events``, ``distributed``) and ``_private`` ones is imported the first time the
registry is used, so registering is all it takes:

.. code-block:: python

    from dataclasses import dataclass
    from napari_cryoguard.defenses.at import InnerMaxParams, attack_mode, pgd_trajectory
    from napari_cryoguard.defenses.base import Batch, Defense, register_defense
    from napari_cryoguard.registry import number

    @dataclass
    class MyParams(InnerMaxParams):     # eps, step_size, steps, norm, eps_unit, checked
        beta: float = number(6.0)       # a default from the paper, cited in the docstring

    def my_loss(model, batch: Batch, params: MyParams):
        \"\"\"Pure function: (loss tensor, {name: float}). Cite the paper's equation.\"\"\"
        with attack_mode(model) as plain:          # attacks run on the plain model in
            x_adv = ...                            # eval mode, before the loss' forward
        logits = model(batch.x)                    # pass, which goes through ``model``
        ...
        return loss, {"ce": ..., "kl": ...}

    @register_defense("mine", MyParams)
    class Mine(Defense):
        def loss(self, model, batch):
            return my_loss(model, batch, self.params)

The ``cryoguard train --defense mine --set beta=3`` option, the Train widget's form and
``get_defense("mine", beta=3)`` then all read ``MyParams``.

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
