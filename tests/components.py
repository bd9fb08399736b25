"""The component checks now live in :mod:`hither.testing.components`; re-exported here for
the tests that import them from ``tests.components``."""

from hither.testing.components import *  # noqa: F403
from hither.testing.components import (  # noqa: F401
    COMPONENTS,
    TEST_IMAGE,
    _fail_or_skip,
    missing,
    require,
)
