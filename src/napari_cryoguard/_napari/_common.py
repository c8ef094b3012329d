"""Old home of the widgets' shared helpers, now split by job; kept for the names that
``pick_widget.py`` still imports from here (new code imports from the modules below).

- :mod:`._layers`: layer lookups, adding layers and applying updates in event-loop steps;
- :mod:`._warmup`: drawing the plugin's kinds of visuals once at idle;
- :mod:`._workers`: worker threads, errors as notifications, the quiet garbage collector;
- :mod:`._picks`: the ``picks`` layer (shown, selected, results written back);
- :mod:`._particles`: single-particle cubes beside their particle;
- :mod:`._models`: the model picker.
"""

from napari_cryoguard._napari._layers import (
    PICKS_LAYER,
    SUBTOMOGRAMS_LAYER,
    apply_stepwise,
    iter_add_layer,
    voxel_size_of,
)
from napari_cryoguard._napari._picks import connect_pick_selection, iter_picks_layer
from napari_cryoguard._napari._warmup import schedule_warm_up
from napari_cryoguard._napari._workers import show_error, start_worker

__all__ = ["PICKS_LAYER", "SUBTOMOGRAMS_LAYER", "apply_stepwise", "connect_pick_selection",
           "iter_add_layer", "iter_picks_layer", "schedule_warm_up", "show_error",
           "start_worker", "voxel_size_of"]
