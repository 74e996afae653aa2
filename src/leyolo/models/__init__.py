"""Model families. Importing this package registers every family in the registry."""

from . import leyolo  # noqa: F401  (registers leyolo-n/s/m/l)
from . import yolov12  # noqa: F401  (registers yolov12-{n,s,m,l,x} and their -turbo revisions)
