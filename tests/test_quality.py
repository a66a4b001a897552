"""Sample-quality metrics: judge accuracy and the Frechet distance on judge features."""

import numpy as np
import pytest
import scipy.linalg
import torch

from robustfit import AdversarialClassifier
from robustfit.datasets import load_digits_images
from robustfit.metrics import SampleQuality, frechet_distance, sample_quality


@pytest.fixture(scope="module")
def digits():
    X, y = load_digits_images()
    return X, y


@pytest.fixture(scope="module")
def quality_real(digits):
    """Real images judged against other real images, judge trained here."""
    torch.set_num_threads(1)
    X, y = digits
    return sample_quality(X[:400], y[:400], X[400:1000], y[400:1000], random_state=0)


def test_frechet_distance_of_known_gaussians():
    rng = np.random.RandomState(0)
    a = rng.randn(4000, 3)
    # a shift moves only the mean term: exactly the squared shift
    assert frechet_distance(a, a + [1.0, 2.0, 0.0]) == pytest.approx(5.0, abs=1e-9)
    assert frechet_distance(a, a) == pytest.approx(0.0, abs=1e-9)
    # against the textbook formula with scipy's matrix square root
    b = a * [3.0, 1.0, 0.5] + [0.0, 1.0, 0.0]
    ca, cb = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    mu = a.mean(0) - b.mean(0)
    ref = mu @ mu + np.trace(ca + cb - 2 * scipy.linalg.sqrtm(ca @ cb).real)
    assert frechet_distance(a, b) == pytest.approx(ref, rel=1e-6)
    assert frechet_distance(a, b) == pytest.approx(frechet_distance(b, a), rel=1e-9)
    # singular covariances (fewer rows than columns) stay finite and non-negative
    assert np.isfinite(frechet_distance(rng.randn(3, 10), rng.randn(4, 10)))


def test_frechet_distance_rejects_bad_features():
    with pytest.raises(ValueError, match="same number of columns"):
        frechet_distance(np.zeros((5, 3)), np.zeros((5, 4)))
    with pytest.raises(ValueError, match="at least 2 rows"):
        frechet_distance(np.zeros((1, 3)), np.zeros((5, 3)))


def test_real_samples_score_well(quality_real):
    q = quality_real
    assert isinstance(q, SampleQuality)
    assert q.judge_accuracy > 0.8 and q.real_accuracy > 0.8
    assert q.n_synthetic == 400 and q.n_real == 300  # half of the 600 real ones is the reference
    assert q.feature_dim == 100 and q.feature_layer == "classifier.3"  # SmallCNN's hidden layer
    assert q.per_class_judge_accuracy.shape == (10,) and q.per_class_frechet_distance.shape == (10,)
    assert np.all(np.isfinite(q.per_class_frechet_distance))


def test_degraded_samples_score_worse(digits, quality_real):
    X, y = digits
    rng = np.random.RandomState(0)
    noisy = np.clip(X[:400] + rng.uniform(0, 0.6, X[:400].shape), 0, 1).astype(np.float32)
    judge = quality_real.judge
    good = sample_quality(X[:400], y[:400], X[1000:1400], y[1000:1400], judge=judge)
    bad = sample_quality(noisy, y[:400], X[1000:1400], y[1000:1400], judge=judge)
    wrong = sample_quality(X[:400], (y[:400] + 1) % 10, X[1000:1400], y[1000:1400], judge=judge)
    assert bad.frechet_distance > 2 * good.frechet_distance
    assert bad.judge_accuracy < good.judge_accuracy
    # wrong labels: the judge disagrees, but the features are the same images'
    assert wrong.judge_accuracy < 0.2 < good.judge_accuracy
    # a given judge uses all real samples as reference
    assert good.n_real == 400 and good.judge is judge


def test_seeded_judge_is_reproducible(digits):
    X, y = digits
    a = sample_quality(X[:100], y[:100], X[100:400], y[100:400], max_epochs=3, random_state=1)
    b = sample_quality(X[:100], y[:100], X[100:400], y[100:400], max_epochs=3, random_state=1)
    assert a.judge_accuracy == b.judge_accuracy
    assert a.frechet_distance == pytest.approx(b.frechet_distance, rel=1e-6)


def test_errors_name_the_problem(digits, quality_real):
    X, y = digits
    with pytest.raises(ValueError, match="different sample shapes"):
        sample_quality(X[:50, :, :4, :4], y[:50], X[50:100], y[50:100])
    with pytest.raises(ValueError, match="different lengths"):
        sample_quality(X[:50], y[:49], X[50:100], y[50:100])
    with pytest.raises(ValueError, match=r"labels \[11\] that are not among the real labels"):
        sample_quality(X[:50], np.where(y[:50] == 3, 11, y[:50]), X[50:100], y[50:100])
    with pytest.raises(ValueError, match="not among the judge's classes"):
        sample_quality(X[:50], np.full(50, 12), X[50:100], y[50:100], judge=quality_real.judge)
    with pytest.raises(ValueError, match="fitted classifier"):
        sample_quality(X[:50], y[:50], X[50:100], y[50:100], judge=AdversarialClassifier())
    with pytest.raises(ValueError, match="at least 2 samples"):
        sample_quality(X[:1], y[:1], X[50:100], y[50:100])
    with pytest.raises(ValueError, match="test_size"):
        sample_quality(X[:50], y[:50], X[50:100], y[50:100], test_size=1.5)
    with pytest.raises(ValueError, match="must have 2 .* or 4"):
        sample_quality(X[:50, 0], y[:50], X[50:100, 0], y[50:100])
