"""What several dataset tests share: skipping when Debian's Fashion-MNIST files are absent."""

import pytest

from growbench.datasets import fashion_mnist

NEEDS_DEBIAN_FASHION_MNIST = pytest.mark.skipif(
    fashion_mnist._files_in(fashion_mnist.DEBIAN_DIR) is None,
    reason=f"no Fashion-MNIST in {fashion_mnist.DEBIAN_DIR}: apt-get install dataset-fashion-mnist",
)
