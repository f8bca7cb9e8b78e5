"""`npva view`: the avatar in the browser (viser), from a free camera, over a timeline, in render modes."""

from npva.view.live import LiveView
from npva.view.scene import ViewSubject, open_subject
from npva.view.server import Viewer, serve, viser_module

__all__ = ["LiveView", "ViewSubject", "Viewer", "open_subject", "serve", "viser_module"]
