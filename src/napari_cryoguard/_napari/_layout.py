"""Building blocks that keep every dock widget within a laptop screen (1280 x 800).

- :class:`DockWidget`: the root of each plugin widget. napari docks ``widget.native``,
  so the root is a plain widget holding a vertical scroll area; the controls live in
  ``self.body``. A tall form scrolls instead of growing the window.
- :class:`Group`: a collapsible group of controls (model, defense, recipe parameters),
  closed by default, opened by its header button.
- :func:`status_label`: a Label whose text wraps and never widens the dock.
- :func:`button_row`, :func:`plot_label`, :func:`show_rgba`: a row of buttons, a plot
  rendered off the Qt thread and shown as an image.
"""

from __future__ import annotations

from magicgui.widgets import Container, Label, PushButton

#: widest a dock widget asks to be (px): napari's dock area then keeps the canvas wide
DOCK_WIDTH = 380
#: how long after docking a widget's controls are made (ms): a turn of its own
BUILD_DELAY_MS = 20
#: width of a dock widget before its controls are made (px): about what they will take
PLACEHOLDER_WIDTH = 350


def fit_combos(qwidget) -> None:
    """Let every combo box under ``qwidget`` shrink below its longest choice.

    Long choices (checkpoint paths, layer names, label sources) must not widen the dock;
    call this after making combo boxes (the dock's first show, the controls' build, a
    form rebuilt for another dataclass).
    """
    from qtpy.QtWidgets import QComboBox

    policy = QComboBox.SizeAdjustPolicy.AdjustToMinimumContentsLengthWithIcon
    for combo in qwidget.findChildren(QComboBox):
        if combo.sizeAdjustPolicy() != policy:
            combo.setSizeAdjustPolicy(policy)
            combo.setMinimumContentsLength(10)


def _scroll_area_class():
    """A vertical scroll area whose size hints follow its content's width (never clipped)
    but whose height never asks for more than the screen has."""
    from qtpy.QtCore import QSize
    from qtpy.QtWidgets import QScrollArea

    class FitScrollArea(QScrollArea):
        def _bar(self) -> int:
            return self.verticalScrollBar().sizeHint().width() + 4

        def minimumSizeHint(self) -> QSize:  # noqa: N802 - Qt API
            inner = self.widget()
            width = inner.minimumSizeHint().width() if inner is not None else 200
            return QSize(width + self._bar(), 80)

        def sizeHint(self) -> QSize:  # noqa: N802 - Qt API
            inner = self.widget()
            hint = inner.sizeHint() if inner is not None else QSize(DOCK_WIDTH, 400)
            return QSize(max(min(hint.width(), DOCK_WIDTH), self.minimumSizeHint().width()),
                         min(hint.height(), 560))

        def showEvent(self, event) -> None:  # noqa: N802 - Qt API
            fit_combos(self)
            super().showEvent(event)

    return FitScrollArea


class DockWidget(Container):
    """A dock widget root: controls in ``self.body`` inside a vertical scroll area.

    ``viewer`` is kept as ``self._viewer``; ``self._worker`` is the widget's running
    worker (set by ``_workers.start_worker``; Cancel and the tests use it).

    The controls are made by the subclass's :meth:`_build`, one event-loop turn after the
    constructor: napari's own docking work (the dock, its tab, a settings save) and the
    controls' construction then fall in different turns, and neither freezes the window
    long. Reading an attribute that :meth:`_build` sets before then builds at once, so code
    that makes a widget and uses it straight away (scripts, tests) sees no difference.
    """

    def __init__(self, viewer=None) -> None:
        from qtpy.QtCore import Qt, QTimer
        from qtpy.QtWidgets import QFrame, QSizePolicy

        from napari_cryoguard._napari._workers import quiet_gc

        with quiet_gc():  # napari's objects of the time moved out of full collections' way
            pass  # (a full pass over them: 150-480 ms of frozen event loop, amid the docking)
        super().__init__(labels=False)
        self._viewer = viewer
        self._worker = None
        self.body = Container(labels=True)
        scroll = _scroll_area_class()()
        scroll.setWidgetResizable(True)
        scroll.setFrameShape(QFrame.Shape.NoFrame)
        scroll.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
        scroll.setWidget(self.body.native)
        scroll.setSizePolicy(QSizePolicy.Policy.Preferred, QSizePolicy.Policy.Expanding)
        self._scroll = scroll
        layout = self.native.layout()
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(scroll)
        self._built = False
        # until the controls are made (a turn later), napari docks a widget this wide
        scroll.setMinimumWidth(PLACEHOLDER_WIDTH)
        timer = QTimer(self.native)  # dies with the widget: never builds a deleted one
        timer.setSingleShot(True)
        timer.setInterval(BUILD_DELAY_MS)  # after the empty dock's first paint
        timer.timeout.connect(self.ensure_built)
        timer.start()
        self._build_timer = timer

    def _build(self) -> None:
        """Make the controls (subclasses); called once, by :meth:`ensure_built`."""

    def ensure_built(self) -> None:
        """Make the controls now if they are not made yet."""
        if self.__dict__.get("_built") is False:
            self._built = True  # first: an attribute read inside _build must not recurse
            self._build_timer.stop()
            self._build()
            fit_combos(self.native)  # made after the dock's first show
            # the dock was sized by the empty widget's placeholder width; from now on by
            # the controls (a scroll area does not pass its content's new hints on itself)
            self._scroll.setMinimumWidth(0)
            self._scroll.updateGeometry()

    @property
    def built(self) -> bool:
        return bool(self.__dict__.get("_built"))

    def __getattr__(self, name: str):
        if self.__dict__.get("_built") is False and not name.startswith("__"):
            self.ensure_built()
            return getattr(self, name)
        return super().__getattr__(name)

    def reset_choices(self, *_) -> None:
        """napari calls this when layers change: refresh every combo box of the body."""
        self.body.reset_choices()

    def add_native(self, qwidget) -> None:
        """Append a plain Qt widget (a plot canvas) to the body."""
        self.body.native.layout().addWidget(qwidget)


class Group(Container):
    """A collapsible group: a header button and a body of controls, closed by default."""

    def __init__(self, title: str, widgets=(), expanded: bool = False) -> None:
        super().__init__(labels=False)
        self.margins = (0, 0, 0, 0)
        self.title = title
        self.toggle = PushButton(text="")
        self.inner = Container(labels=True, widgets=list(widgets))
        self.inner.margins = (8, 0, 0, 0)
        self.extend([self.toggle, self.inner])
        self.toggle.changed.connect(self._toggle)
        self.set_expanded(expanded)

    @property
    def expanded(self) -> bool:
        return self._expanded

    def set_expanded(self, expanded: bool) -> None:
        self._expanded = bool(expanded)
        self.inner.visible = self._expanded
        self.toggle.text = ("\u25be " if expanded else "\u25b8 ") + self.title

    def _toggle(self, *_) -> None:
        self.set_expanded(not self.expanded)


def status_label(value: str = "") -> Label:
    """A Label for status and error text: wraps, selectable, never widens the dock."""
    from qtpy.QtCore import Qt
    from qtpy.QtWidgets import QSizePolicy

    label = Label(value=value)
    q = label.native
    q.setWordWrap(True)
    q.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
    policy = QSizePolicy(QSizePolicy.Policy.Ignored, QSizePolicy.Policy.Preferred)
    policy.setHeightForWidth(True)
    q.setSizePolicy(policy)
    q.setMinimumWidth(0)
    return label


def button_row(*buttons) -> Container:
    """Buttons side by side, without margins (one row of the body)."""
    row = Container(layout="horizontal", labels=False, widgets=list(buttons))
    row.margins = (0, 0, 0, 0)
    return row


def plot_label(height: int):
    """A QLabel that shows a plot rendered elsewhere (an Agg figure drawn off the Qt
    thread): ``height`` px high, as wide as the dock lets it be, never wider."""
    from qtpy.QtCore import Qt
    from qtpy.QtWidgets import QLabel, QSizePolicy

    label = QLabel()
    label.setFixedHeight(height)
    label.setMinimumWidth(0)
    label.setSizePolicy(QSizePolicy.Policy.Ignored, QSizePolicy.Policy.Fixed)
    label.setAlignment(Qt.AlignmentFlag.AlignCenter)
    return label


def show_rgba(label, rgba, ratio: float) -> None:
    """Show an RGBA image (H, W, 4 uint8) rendered at device pixel ratio ``ratio`` in
    ``label`` (:func:`plot_label`)."""
    from qtpy.QtGui import QImage, QPixmap

    h, w = rgba.shape[:2]
    pixmap = QPixmap.fromImage(QImage(rgba.data, w, h, 4 * w, QImage.Format.Format_RGBA8888).copy())
    pixmap.setDevicePixelRatio(ratio)
    label.setPixmap(pixmap)
