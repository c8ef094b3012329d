"""Building blocks that keep every dock widget within a laptop screen (1280 x 800).

- :class:`DockWidget`: the root of each plugin widget. napari docks ``widget.native``,
  so the root is a plain widget holding a vertical scroll area; the controls live in
  ``self.body``. A tall form scrolls instead of growing the window.
- :class:`Group`: a collapsible group of controls (model, defense, recipe parameters),
  closed by default, opened by its header button.
- :func:`status_label`: a Label whose text wraps and never widens the dock.
"""

from __future__ import annotations

from magicgui.widgets import Container, Label, PushButton

#: widest a dock widget asks to be (px): napari's dock area then keeps the canvas wide
DOCK_WIDTH = 380


class DockWidget(Container):
    """A dock widget root: controls in ``self.body`` inside a vertical scroll area."""

    def __init__(self) -> None:
        from qtpy.QtCore import Qt
        from qtpy.QtWidgets import QFrame, QScrollArea, QSizePolicy

        super().__init__(labels=False)
        self.body = Container(labels=True)
        scroll = QScrollArea()
        scroll.setWidgetResizable(True)
        scroll.setFrameShape(QFrame.Shape.NoFrame)
        scroll.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
        scroll.setWidget(self.body.native)
        scroll.setSizePolicy(QSizePolicy.Policy.Preferred, QSizePolicy.Policy.Expanding)
        self._scroll = scroll
        layout = self.native.layout()
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(scroll)
        self.native.setMaximumWidth(DOCK_WIDTH + 40)
        self.native.setMinimumWidth(260)

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
        return bool(self.inner.visible)

    def set_expanded(self, expanded: bool) -> None:
        self.inner.visible = bool(expanded)
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
