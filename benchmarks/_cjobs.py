"""Job functions for the container and environment benchmarks (``containers.py``).

A function that runs in a container or a uv environment is shipped to the worker as the
*source* of its module, imported there by file name: this module's top level therefore
imports nothing but ``hither`` (the worker has a small stand-in for it), so it loads in
any image with a ``python3``. The image is the CI image ``local/py3numpy:bookworm``
(``.ci/build-test-images.sh``; ``$HITHER_TEST_IMAGE``).
"""

import hither as hi


@hi.function("cinc", "0.1.0", container="docker://local/py3numpy:bookworm")
def cinc(x):
    """The tiny job, in the container: ``x + 1``."""
    return x + 1


@hi.function("cnumpy", "0.1.0")
def cnumpy():
    """The numpy version where the job runs (checks a uv environment's contents)."""
    import numpy

    return numpy.__version__
