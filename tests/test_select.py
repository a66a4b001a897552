"""Selection of synthetic samples: robust discriminator (ARC), teacher confidence, random."""

from __future__ import annotations

import doctest

import numpy as np
import pytest
from sklearn.base import clone
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import FunctionTransformer

from robustfit import AdversarialClassifier
from robustfit._validation import InvalidParameterError
from robustfit.metrics import arc_sample_scores
from robustfit.proxy import ArrayProxy, SelectedProxy

ARC = {"max_epochs": 8, "batch_size": 16}


def _images(y, rng):
    """8x8 images of 2 classes: a bright vertical (class 0) or horizontal (class 1) bar, faint noise."""
    bars = np.zeros((2, 1, 8, 8), "float32")
    bars[0, 0, :, 2:4] = bars[1, 0, 3:5, :] = 0.9
    return np.clip(bars[y] + rng.rand(len(y), 1, 8, 8) * 0.1, 0, 1).astype("float32")


@pytest.fixture(scope="module")
def toy():
    """60 real images; 120 candidates: 60 real-like (the first, fresh draws), 60 uniform noise."""
    rng = np.random.RandomState(0)
    y = np.arange(60) % 2
    X, good = _images(y, rng), _images(y, rng)
    noise = rng.rand(60, 1, 8, 8).astype("float32")
    return X, y, np.concatenate([good, noise]), np.concatenate([y, y])


def test_arc_sample_scores_rank_real_like_samples_first(toy):
    X, _, Xc, _ = toy
    s = arc_sample_scores(X, Xc, epsilon=0.05, random_state=0, **ARC)
    assert s.shape == (120,) and ((s >= 0) & (s <= 1)).all()
    assert s[:60].mean() > s[60:].mean() + 0.2
    np.testing.assert_array_equal(s, arc_sample_scores(X, Xc, epsilon=0.05, random_state=0, **ARC))


def test_arc_selection_keeps_the_real_like_half_at_equal_counts(toy):
    X, y, Xc, yc = toy
    kept = {}
    for sel in ("arc", "random", "confidence"):
        teacher = make_pipeline(FunctionTransformer(lambda a: a.reshape(len(a), -1)), LogisticRegression())
        p = SelectedProxy(ArrayProxy(Xc, yc), selection=sel, keep_fraction=0.5, epsilon=0.05,
                          teacher=teacher if sel == "confidence" else None, arc_params=ARC,
                          random_state=0).fit(X, y)
        kept[sel] = p.support_
        # equal counts, class balance kept: 30 of the 60 candidates of each class
        assert np.bincount(p.y_selected_).tolist() == [30, 30]
        assert p.X_selected_.shape == (60, 1, 8, 8) and p.scores_.shape == (120,)
        np.testing.assert_array_equal(p.X_selected_, Xc[p.support_])
    assert (kept["arc"] < 60).mean() >= 0.9        # the real-like ones
    assert 0.2 < (kept["random"] < 60).mean() < 0.8  # random keeps both kinds
    assert p.teacher_ is not None


def test_selection_is_deterministic_with_random_state(toy):
    X, y, Xc, yc = toy
    a = SelectedProxy(ArrayProxy(Xc, yc), epsilon=0.05, arc_params=ARC, random_state=1).fit(X, y)
    b = clone(a).fit(X, y)
    np.testing.assert_array_equal(a.scores_, b.scores_)
    np.testing.assert_array_equal(a.support_, b.support_)
    r = [SelectedProxy(ArrayProxy(Xc, yc), selection="random", random_state=s).fit(X, y).support_
         for s in (0, 0, 1)]
    np.testing.assert_array_equal(r[0], r[1])
    assert not np.array_equal(r[0], r[2])


def test_random_state_seeds_the_generator_and_the_teacher_it_fits(toy):
    """An unseeded generator (a Gaussian mixture) and teacher (a random forest) are fitted
    from the proxy's random_state: two seeded fits select the same samples (before, the
    scores and the selection differed between them)."""
    from sklearn.ensemble import RandomForestClassifier

    from robustfit.proxy import GaussianMixtureProxy, PseudoLabeledProxy

    X, y, _, _ = toy
    gen = GaussianMixtureProxy(pca_components=4, mixture_components=2)
    forest = RandomForestClassifier(n_estimators=5)
    for make in (lambda: SelectedProxy(gen, selection="confidence", teacher=forest, random_state=0),
                 lambda: PseudoLabeledProxy(gen, forest, random_state=0)):
        a, b = make().fit(X, y), make().fit(X, y)
        np.testing.assert_array_equal(a.sample(40, random_state=0)[0], b.sample(40, random_state=0)[0])
        assert gen.random_state is None and forest.random_state is None  # not mutated
    a = SelectedProxy(gen, selection="confidence", teacher=forest, random_state=0).fit(X, y)
    np.testing.assert_array_equal(a.scores_, clone(a).fit(X, y).scores_)


def test_confidence_selection_drops_mislabelled_candidates(toy):
    X, y, Xc, yc = toy
    good = Xc[:60]
    cand_y = np.concatenate([y, 1 - y])  # the second copy carries the wrong labels
    teacher = make_pipeline(FunctionTransformer(lambda a: a.reshape(len(a), -1)), LogisticRegression())
    p = SelectedProxy(ArrayProxy(np.concatenate([good, good]), cand_y), selection="confidence",
                      teacher=teacher, random_state=0).fit(X, y)
    assert (p.support_ < 60).mean() >= 0.9


def test_per_class_false_keeps_the_top_overall_and_sampling_draws_kept_samples(toy):
    X, y, Xc, yc = toy
    p = SelectedProxy(ArrayProxy(Xc, yc), selection="random", keep_fraction=0.25, per_class=False,
                      random_state=0).fit(X, y)
    assert len(p.support_) == 30
    np.testing.assert_array_equal(np.sort(np.argsort(-p.scores_, kind="stable")[:30]), p.support_)
    Xs, ys = p.sample(40, random_state=0)
    assert np.bincount(ys).tolist() == [20, 20]
    kept = {x.tobytes() for x in p.X_selected_}
    assert all(x.tobytes() in kept for x in Xs)
    Xr, yr = p.set_params(n_samples=10).fit_resample(X, y)  # an imbalanced-learn sampler too
    assert Xr.shape == (70, 1, 8, 8) and len(yr) == 70


def test_selected_proxy_as_proxy_data_of_a_classifier(toy):
    X, y, Xc, yc = toy
    proxy = SelectedProxy(ArrayProxy(Xc, yc), selection="random", random_state=0)
    clf = AdversarialClassifier(max_epochs=1, batch_size=32, train_split=None, proxy_data=proxy,
                                random_state=0).fit(X, y)
    kept = {x.tobytes() for x in clf.proxy_.X_selected_}
    assert all(x.tobytes() in kept for x in np.asarray(clf.proxy_X_.cpu()))
    assert clf.get_params()["proxy_data__selection"] == "random"


def test_generator_candidates_are_drawn_when_not_an_array(toy):
    from robustfit.proxy import GaussianMixtureProxy

    X, y, _, _ = toy
    p = SelectedProxy(GaussianMixtureProxy(mixture_components=1, pca_components=4, random_state=0),
                      selection="random", n_candidates=50, keep_fraction=0.4, random_state=0).fit(X, y)
    assert p.scores_.shape == (50,) and len(p.y_selected_) == 20


def test_selection_errors(toy):
    X, y, Xc, yc = toy
    gen = ArrayProxy(Xc, yc)
    with pytest.raises(InvalidParameterError, match="selection"):
        SelectedProxy(gen, selection="best").fit(X, y)
    with pytest.raises(InvalidParameterError, match="teacher"):
        SelectedProxy(gen, selection="confidence").fit(X, y)
    with pytest.raises(InvalidParameterError, match="keep_fraction"):
        SelectedProxy(gen, keep_fraction=0).fit(X, y)
    with pytest.raises(InvalidParameterError, match=r"arc_params.*epsilon"):
        SelectedProxy(gen, arc_params={"epsilon": 0.3}).fit(X, y)
    with pytest.raises(InvalidParameterError, match="cv"):
        SelectedProxy(gen, cv=1).fit(X, y)
    with pytest.raises(InvalidParameterError, match="generator"):
        SelectedProxy(X).fit(X, y)
    with pytest.raises(ValueError, match="kept no samples of classes"):
        p = SelectedProxy(gen, selection="random", keep_fraction=0.01, per_class=False, random_state=0)
        p.fit(X, y).sample(4)
    with pytest.raises(ValueError, match="cv"):
        arc_sample_scores(X, Xc, cv=1)
    with pytest.raises(ValueError, match="different sample shapes"):
        arc_sample_scores(X, Xc[:, :, :4])
    with pytest.raises(ValueError, match="fewer than 2 \\* cv"):
        arc_sample_scores(X, Xc[:5], cv=3)
    with pytest.raises(ValueError, match="epsilon"):
        arc_sample_scores(X, Xc, epsilon=-0.1)


def test_a_classifier_with_a_selected_proxy_saves_and_loads(toy, tmp_path):
    X, y, Xc, yc = toy
    proxy = SelectedProxy(ArrayProxy(Xc, yc), selection="random", keep_fraction=0.5, random_state=0)
    clf = AdversarialClassifier(max_epochs=1, batch_size=32, train_split=None, proxy_data=proxy,
                                random_state=0).fit(X, y)
    loaded = AdversarialClassifier.load(clf.save(tmp_path / "m.pt") and tmp_path / "m.pt")
    np.testing.assert_array_equal(loaded.proxy_.support_, clf.proxy_.support_)
    np.testing.assert_array_equal(loaded.proxy_.sample(8, random_state=0)[0], clf.proxy_.sample(8, random_state=0)[0])


@pytest.mark.parametrize("obj", [SelectedProxy, arc_sample_scores], ids=lambda o: o.__name__)
def test_docstring_examples(obj):
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS)
    for test in doctest.DocTestFinder().find(obj, obj.__name__, globs={}):
        runner.run(test)
    assert runner.summarize(verbose=False).attempted > 0 and runner.failures == 0
