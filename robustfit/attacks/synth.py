"""Generator-synthesized perturbations (Baytas & Deb, "Robustness-via-Synthesis").

A small generator network maps random vectors (and, optionally, the image) to
perturbations bounded to the epsilon-ball. Training alternates per batch:

1. the generator takes one step that *maximizes* the optimal-transport
   distance between the classifier's representations of the clean and the
   synthesized batch (optionally plus the classifier's loss);
2. the classifier takes one step on the cross-entropy of the synthesized batch
   plus ``ot_weight`` times that OT distance.

No gradient of the classifier with respect to its input is computed per
sample, as PGD does; the generator needs one backward pass through the
classifier per batch, and the perturbations come from a forward pass of the
generator.
"""

from __future__ import annotations

import contextlib
import copy
from numbers import Integral, Real

import torch
import torch.nn.functional as F
from torch import nn

from .._distributed import all_reduce_mean_, broadcast_tensors_, current_shard
from .._ot import sinkhorn_cost, sinkhorn_distance
from .._utils import randn, random_source, randperm, torch_seeded
from .._validation import Interval, Options, check_in_bounds, check_param
from ..models import default_generator, penultimate_layer
from ._base import (
    Attack,
    _as_tensors,
    _module_device,
    eval_mode,
    project_ball,
    project_differentiable,
    random_init,
)


class GeneratorSynth(Attack):
    """Perturbations synthesized by a generator network (Robustness-via-Synthesis).

    Baytas & Deb (Neurocomputing 2023, arXiv 2108.09713) replace the inner
    maximization of adversarial training by a generator ``G`` that maps random
    vectors ``z ~ N(0, I)`` to perturbations. Inside
    :class:`~robustfit.AdversarialClassifier`, every training batch runs

    1. a **generator step**: ascent on
       ``OT(phi(x), phi(x_adv)) + generator_ce_weight * CE(f(x_adv), y)``
       in the generator's parameters, the classifier fixed (in eval mode, or
       in train mode with ``generator_step_mode="train"``);
    2. a **classifier step** on ``CE(f(x_adv), y) + ot_weight * OT(phi(x), phi(x_adv))``,
       on the synthesized batch ``x_adv`` of the generator step (detached), or
       with ``resample=True`` on a batch drawn again from the updated generator
       (the authors' alternation, one more generator forward pass per batch),

    where ``phi`` is the output of ``feature_layer`` (the logits by default;
    ``"penultimate"``: the input of the last linear layer) and ``OT`` is the
    debiased entropic Sinkhorn divergence
    :func:`robustfit.losses.sinkhorn_distance` between the two batches of
    representations (``ot_method="divergence"``) or the authors' fixed-iteration
    transport cost :func:`robustfit.losses.sinkhorn_cost`
    (``ot_method="sinkhorn"``). The synthesized sample is

    .. math::

        x_{adv} = \\Pi_{box}\\Big(x + \\Pi_{B_\\epsilon}\\big(u + \\delta\\big)\\Big),
        \\qquad \\delta = \\epsilon \\tanh G(z) \\text{ or } \\operatorname{clip}_{[-\\epsilon, \\epsilon]} G(z)
        \\;\\; (l_\\infty),
        \\quad \\delta = \\Pi_{B_\\epsilon}(G(z)) \\;\\; (l_2),

    with ``u`` uniform in the ball (``random_start=True``, as in the authors'
    code) or zero, so every sample lies in the epsilon-ball and the input box.

    Used on its own, ``attack(module, X, y)`` samples from the current generator;
    :meth:`fit_generator` first trains it against a fixed module.
    :meth:`published` gives the authors' recipe in one line; the defaults are
    robustfit's (faster, measured on the docs page).

    Parameters
    ----------
    epsilon : float, default=0.3
        Radius of the threat model's ball.
    norm : {"linf", "l2"}, default="linf"
        Norm of the threat model.
    latent_dim : int, default=64
        Dimension of the random vectors ``z``.
    generator : torch.nn.Module, callable or None, default=None
        The generator. ``None`` builds :func:`default_generator` from the input
        shape (transposed convolutions for images, an MLP for tabular data). A
        module is deep-copied at first use (the argument itself is never
        trained); a callable is called as ``generator(input_shape, latent_dim)``
        and must return a module. Its ``forward(z)`` -- ``forward(z, x)`` with
        ``conditional=True`` -- returns raw perturbations shaped like ``x``;
        :class:`GeneratorSynth` bounds them.
    generator_lr : float, default=1e-3
        Learning rate of the generator's optimizer (the authors: 0.01 with
        momentum SGD).
    ot_weight : float, default=1.0
        Weight of the OT term in the classifier's loss (the authors use 1).
        ``0`` trains on the synthesized samples with cross-entropy only.
    ot_blur : float, default=0.1
        Entropic blur of the Sinkhorn divergence, in the units of the
        representations (the entropic regularization is ``ot_blur ** 2``).
    ot_scaling : float, default=0.3
        Ratio of the solver's epsilon-scaling annealing, in ``(0, 1)``
        (``scaling`` of :func:`robustfit.losses.sinkhorn_distance`): the
        entropic regularization is divided by ``1 / ot_scaling ** 2`` per
        Sinkhorn iteration, from the representations' diameter down to
        ``ot_blur``. Smaller is fewer iterations (faster, less converged);
        :func:`~robustfit.losses.sinkhorn_distance`'s (and geomloss's)
        default is 0.5.
    feature_layer : str or None, default=None
        Name of the classifier's submodule (as in ``module.named_modules()``,
        e.g. ``"classifier.2"`` for the ReLU after the hidden layer of
        :class:`~robustfit.models.SmallCNN`) whose output is the
        representation; ``"penultimate"`` takes the *input* of the last
        :class:`torch.nn.Linear` layer (:func:`robustfit.models.penultimate_layer`:
        the features before the logits for robustfit's networks, ResNet18 and
        most classifiers with a linear head; the authors' choice); ``None``
        uses the logits. The representation is read through a forward hook,
        so no extra forward pass is spent on it.
    conditional : bool, default=False
        Feed the clean input to the generator along with ``z``, so the
        perturbation can depend on the image.
    label_smoothing : float, default=0.0
        Label smoothing of the cross-entropy on synthesized samples, in
        ``[0, 1)`` (torch's convention). It is applied by adding
        ``s * (CE(f(x_adv), uniform) - CE(f(x_adv), y))`` to the classifier's
        loss, which turns the default cross-entropy criterion into the smoothed
        one. The authors' code uses a strong smoothing (0.5 of the mass on the
        other classes, ``0.556`` in torch's convention).
    generator_ce_weight : float, default=0.0
        Weight of the classifier's cross-entropy in the generator's objective;
        ``0`` maximizes the OT distance only, as the authors' code does.
    generator_every : int, default=1
        Take a generator step on every ``generator_every``-th training batch
        only (the authors: every batch). Larger values trade the generator's
        adaptation for speed: the generator step costs about as much as the
        classifier step.
    random_start : bool, default=True
        Add uniform noise from the ball before the generated perturbation (as
        the authors' code does), then project onto the ball.
    bounds : tuple of float or None, default=(0.0, 1.0)
        The input box that synthesized inputs are clipped to; ``None`` for
        unbounded features.
    ot_method : {"divergence", "sinkhorn"}, default="divergence"
        The OT term: ``"divergence"`` is the debiased Sinkhorn divergence
        (:func:`robustfit.losses.sinkhorn_distance`, geomloss's algorithm;
        ``ot_blur``, ``ot_scaling``; zero for identical batches,
        gradients by the envelope theorem); ``"sinkhorn"`` is the authors'
        transport cost of ``ot_iterations`` log-domain Sinkhorn iterations at
        regularization ``ot_reg`` with the squared Euclidean cost, not
        debiased, differentiated through the iterations
        (:func:`robustfit.losses.sinkhorn_cost`; about 8x slower at 100
        iterations).
    ot_reg : float, default=0.01
        Entropic regularization of ``ot_method="sinkhorn"`` (the authors' 0.01),
        in the units of squared distances; unused otherwise.
    ot_iterations : int, default=100
        Sinkhorn iterations of ``ot_method="sinkhorn"`` (the authors' 100);
        unused otherwise.
    generator_optimizer : {"adam", "sgd"}, default="adam"
        The generator's optimizer: Adam, or SGD with momentum 0.9 (the
        authors'), both at ``generator_lr``.
    generator_step_mode : {"eval", "train"}, default="eval"
        The classifier's mode during the generator step. ``"train"`` (the
        authors') runs its batch-norm layers on batch statistics and updates
        their running averages with the clean and the synthesized batch (and
        activates dropout); ``"eval"`` uses the running averages and changes
        nothing in the classifier.
    squash : {"tanh", "clip"}, default="tanh"
        How the generator's raw output is bounded for ``norm="linf"``:
        ``epsilon * tanh(G(z))`` (smooth, gradient everywhere) or
        ``clip(G(z), -epsilon, epsilon)`` (the authors'; no gradient where
        the output is clipped). For ``norm="l2"`` the output is projected onto
        the ball either way.
    generator_width : int or None, default=None
        ``width`` of :func:`~robustfit.models.default_generator` (``None``: its
        default, 4; the authors' generator corresponds to 16). Unused when
        ``generator`` is given.
    resample : bool, default=False
        Draw the classifier step's batch again from the generator *after* its
        step, as the authors' code does (it runs the generator's update, then
        the classifier's on a fresh sample). This costs one more generator
        forward pass per batch, and the generator step then has its own
        forward pass of the classifier (``generator_step_mode="train"`` cannot
        share the classifier's). ``False`` trains the classifier on the batch
        the generator step was computed on.

    Attributes
    ----------
    generator_ : torch.nn.Module
        The generator being trained, created at first use on the module's
        device (pickled with the attack; :func:`sklearn.base.clone` gives an
        attack without it).
    generator_optimizer_ : torch.optim.Adam or torch.optim.SGD
        Its optimizer, with its state.
    input_shape_ : tuple of int
        The input shape the generator was built for.
    n_generator_steps_ : int
        Generator updates taken so far.
    n_train_batches_ : int
        Training batches seen through :meth:`train_perturb`.

    See Also
    --------
    robustfit.losses.sinkhorn_distance : the OT term.

    Examples
    --------
    >>> import torch
    >>> from robustfit.attacks import GeneratorSynth
    >>> net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16, 3))
    >>> X, y = torch.rand(32, 1, 4, 4), torch.randint(0, 3, (32,))
    >>> attack = GeneratorSynth(epsilon=0.1).fit_generator(net, X, y, epochs=2)
    >>> X_adv = attack(net, X, y)
    >>> bool((X_adv - X).abs().max() <= 0.1 + 1e-6)
    True
    """

    def __init__(
        self,
        epsilon=0.3,
        norm="linf",
        latent_dim=64,
        generator=None,
        generator_lr=1e-3,
        ot_weight=1.0,
        ot_blur=0.1,
        ot_scaling=0.3,
        feature_layer=None,
        conditional=False,
        label_smoothing=0.0,
        generator_ce_weight=0.0,
        generator_every=1,
        random_start=True,
        bounds=(0.0, 1.0),
        ot_method="divergence",
        ot_reg=0.01,
        ot_iterations=100,
        generator_optimizer="adam",
        generator_step_mode="eval",
        squash="tanh",
        generator_width=None,
        resample=False,
    ):
        self.epsilon = epsilon
        self.norm = norm
        self.latent_dim = latent_dim
        self.generator = generator
        self.generator_lr = generator_lr
        self.ot_weight = ot_weight
        self.ot_blur = ot_blur
        self.ot_scaling = ot_scaling
        self.feature_layer = feature_layer
        self.conditional = conditional
        self.label_smoothing = label_smoothing
        self.generator_ce_weight = generator_ce_weight
        self.generator_every = generator_every
        self.random_start = random_start
        self.bounds = bounds
        self.ot_method = ot_method
        self.ot_reg = ot_reg
        self.ot_iterations = ot_iterations
        self.generator_optimizer = generator_optimizer
        self.generator_step_mode = generator_step_mode
        self.squash = squash
        self.generator_width = generator_width
        self.resample = resample

    _parameter_constraints = {
        **Attack._parameter_constraints,
        "latent_dim": [Interval(Integral, 1, None)],
        "generator": [None, nn.Module, "callable"],
        "generator_lr": [Interval(Real, 0, None, closed="neither")],
        "ot_weight": [Interval(Real, 0, None)],
        "ot_blur": [Interval(Real, 0, None, closed="neither")],
        "ot_scaling": [Interval(Real, 0, 1, closed="neither")],
        "feature_layer": [None, str],
        "conditional": ["boolean"],
        "label_smoothing": [Interval(Real, 0, 1, closed="left")],
        "generator_ce_weight": [Interval(Real, 0, None)],
        "generator_every": [Interval(Integral, 1, None)],
        "random_start": ["boolean"],
        "ot_method": [Options({"divergence", "sinkhorn"})],
        "ot_reg": [Interval(Real, 0, None, closed="neither")],
        "ot_iterations": [Interval(Integral, 1, None)],
        "generator_optimizer": [Options({"adam", "sgd"})],
        "generator_step_mode": [Options({"eval", "train"})],
        "squash": [Options({"tanh", "clip"})],
        "generator_width": [None, Interval(Integral, 1, None)],
        "resample": ["boolean"],
    }

    @classmethod
    def published(cls, epsilon=8 / 255, n_classes=10, **params):
        """The recipe of the authors' code (Baytas & Deb 2023), in one line.

        ``GeneratorSynth.published(epsilon)`` sets every recipe detail that
        differs between robustfit's defaults and the authors' TensorFlow code
        (see the table on the GeneratorSynth docs page):

        * the OT term on the classifier's penultimate features
          (``feature_layer="penultimate"``);
        * the non-debiased log-domain Sinkhorn transport cost, 100 iterations,
          regularization 0.01, squared Euclidean cost
          (``ot_method="sinkhorn", ot_reg=0.01, ot_iterations=100``);
        * a momentum-SGD generator optimizer, learning rate 0.01
          (``generator_optimizer="sgd", generator_lr=0.01``);
        * the classifier (and so its batch-norm) in training mode during the
          generator step (``generator_step_mode="train"``);
        * the generator's output clipped to ``[-epsilon, epsilon]``
          (``squash="clip"``) after uniform noise from the ball
          (``random_start=True``);
        * label smoothing 0.5 in the authors' convention (half the mass on
          the other classes), ``label_smoothing = 0.5 * n_classes / (n_classes - 1)``
          in torch's convention (``0.556`` for 10 classes);
        * ``z ~ N(0, I_640)`` and a generator of the authors' width
          (``latent_dim=640, generator_width=16``); OT weight 1, no
          cross-entropy in the generator's objective;
        * the authors' alternation: the generator's step, then the
          classifier's on a batch drawn again from the updated generator
          (``resample=True``).

        Parameters
        ----------
        epsilon : float, default=8/255
            Radius of the l_inf ball (the paper's 8/255 on CIFAR and SVHN).
        n_classes : int, default=10
            Number of classes, for the label-smoothing conversion.
        **params
            Further :class:`GeneratorSynth` parameters, overriding the recipe's.

        Returns
        -------
        attack : GeneratorSynth

        Examples
        --------
        >>> from robustfit.attacks import GeneratorSynth
        >>> attack = GeneratorSynth.published(0.1)
        >>> attack.ot_method, attack.feature_layer, attack.squash, round(attack.label_smoothing, 3)
        ('sinkhorn', 'penultimate', 'clip', 0.556)
        """
        check_param(n_classes, "n_classes", [Interval(Integral, 2, None)], f"{cls.__name__}.published")
        recipe = dict(
            epsilon=epsilon, norm="linf", latent_dim=640, generator_width=16, generator_lr=0.01,
            generator_optimizer="sgd", generator_step_mode="train", ot_weight=1.0,
            ot_method="sinkhorn", ot_reg=0.01, ot_iterations=100, feature_layer="penultimate",
            label_smoothing=0.5 * n_classes / (n_classes - 1), generator_ce_weight=0.0,
            generator_every=1, random_start=True, squash="clip", conditional=False, resample=True,
        )
        recipe.update(params)
        return cls(**recipe)

    # ------------------------------------------------------------- generator
    def _ensure_generator(self, x):
        """Build (or move) the generator for inputs shaped like ``x``."""
        shape = tuple(x.shape[1:])
        gen = getattr(self, "generator_", None)
        if gen is None or getattr(self, "input_shape_", None) != shape:
            if self.generator is None:
                gen = default_generator(shape, self.latent_dim, self.conditional, self.generator_width)
            elif isinstance(self.generator, nn.Module):
                gen = copy.deepcopy(self.generator)
            else:
                gen = self.generator(shape, self.latent_dim)
                if not isinstance(gen, nn.Module):
                    raise ValueError(
                        f"generator(input_shape, latent_dim) must return a torch.nn.Module, got {gen!r}"
                    )
            self.generator_ = gen.to(x.device)
            self.generator_optimizer_ = self._make_optimizer()
            self.input_shape_ = shape
            self.n_generator_steps_ = 0
            if current_shard() is not None:  # data-parallel: start from rank 0's weights
                broadcast_tensors_(list(self.generator_.parameters()) + list(self.generator_.buffers()))
        elif _module_device(gen) != x.device:
            self.generator_ = gen.to(x.device)
            for state in self.generator_optimizer_.state.values():
                for k, v in state.items():
                    if torch.is_tensor(v) and v.dim() > 0:
                        state[k] = v.to(x.device)
        if isinstance(self.generator_optimizer_, torch.optim.SGD) != (self.generator_optimizer == "sgd"):
            self.generator_optimizer_ = self._make_optimizer()  # set_params after fit: a fresh optimizer
        for group in self.generator_optimizer_.param_groups:  # set_params after fit
            group["lr"] = self.generator_lr
        return self.generator_

    def _make_optimizer(self):
        if self.generator_optimizer == "sgd":
            return torch.optim.SGD(self.generator_.parameters(), lr=self.generator_lr, momentum=0.9)
        return torch.optim.Adam(self.generator_.parameters(), lr=self.generator_lr)

    def _synthesize(self, x):
        """Sample ``x_adv`` from the generator, with the graph to its parameters."""
        gen = self.generator_
        z = randn((x.shape[0], self.latent_dim), device=x.device, dtype=x.dtype)
        raw = gen(z, x) if self.conditional else gen(z)
        if tuple(raw.shape) != tuple(x.shape):
            raise ValueError(
                f"the generator returned perturbations of shape {tuple(raw.shape)} for inputs "
                f"of shape {tuple(x.shape)}"
            )
        eps, bounds = float(self.epsilon), self._bounds
        if self.norm == "linf":
            delta = (eps * torch.tanh(raw) if self.squash == "tanh"
                     else project_differentiable(x, raw, eps, "linf", None))
        else:
            delta = project_ball(raw, eps, "l2")
        if self.random_start:
            delta = random_init(x, eps, self.norm, None) + delta
        return x + project_differentiable(x, delta, eps, self.norm, bounds)

    def _features(self, module, x):
        """``(features, logits)`` of ``module`` on ``x``, in one forward pass."""
        if self.feature_layer is None:
            logits = module(x)
            return logits, logits
        store = {}
        handle = self._hook(module, lambda f: store.__setitem__("f", f))
        try:
            logits = module(x)
        finally:
            handle.remove()
        return store["f"], logits

    def _hook(self, module, record):
        """Register a forward hook that calls ``record(representation)``:
        the output of ``feature_layer``, or with ``"penultimate"`` the input
        of the last linear layer."""
        if self.feature_layer == "penultimate":
            layer = module.get_submodule(penultimate_layer(module))
            return layer.register_forward_hook(lambda m, inputs, output: record(inputs[0]))
        try:
            layer = module.get_submodule(self.feature_layer)
        except AttributeError:
            names = [n for n, _ in module.named_modules() if n]
            raise ValueError(
                f"feature_layer={self.feature_layer!r} is not a submodule of "
                f"{type(module).__name__}; its submodules are {names[:20]} (or use 'penultimate')"
            ) from None
        return layer.register_forward_hook(lambda m, inputs, output: record(output))

    def _ot(self, a, b):
        if self.ot_method == "sinkhorn":
            return sinkhorn_cost(a.flatten(1), b.flatten(1), reg=self.ot_reg, n_iter=self.ot_iterations)
        return sinkhorn_distance(a.flatten(1), b.flatten(1), blur=self.ot_blur, scaling=self.ot_scaling)

    def _step_mode(self, module):
        """The classifier's mode during the generator step (``generator_step_mode``)."""
        if self.generator_step_mode == "eval":
            return eval_mode(module)
        return _train_mode(module)

    def _generator_step(self, module, x, y, return_sample=False):
        """One ascent step of the generator against a fixed ``module``.

        Returns the objective before the step (detached), and with
        ``return_sample=True`` also the synthesized batch it was computed on
        (detached), which :meth:`train_perturb` hands to the classifier.

        In data-parallel training (a batch shard is active) the generator
        trains data-parallel too: its gradients are averaged over the ranks
        (one all-reduce) and its buffers (BatchNorm statistics) follow rank 0,
        so every rank keeps the same generator. A rank whose shard has a
        single sample takes part with a zero gradient.
        """
        gen = self._ensure_generator(x)
        gen.train()
        params = [p for p in gen.parameters() if p.requires_grad]
        shard = current_shard()
        if shard is not None and x.shape[0] < 2:  # BatchNorm cannot train on one sample
            with eval_mode(gen), torch.no_grad():
                x_adv = self._synthesize(x)
            objective = torch.zeros((), device=x.device)
            grads = [torch.zeros_like(p) for p in params]
        else:
            with self._step_mode(module), torch.enable_grad():
                with torch.no_grad():
                    f_clean, _ = self._features(module, x)
                x_adv = self._synthesize(x)
                f_adv, logits_adv = self._features(module, x_adv)
                objective = self._ot(f_clean, f_adv)
                if self.generator_ce_weight:
                    objective = objective + self.generator_ce_weight * F.cross_entropy(logits_adv.float(), y)
                grads = torch.autograd.grad(-objective, params, allow_unused=True)
        self._apply_generator_grads(params, grads)
        if return_sample:
            return objective.detach(), x_adv.detach()
        return objective.detach()

    def _apply_generator_grads(self, params, grads):
        """Set the generator's gradients (averaged over the ranks in data-parallel
        training) and take its optimizer's step."""
        shard = current_shard()
        if shard is not None:
            grads = [torch.zeros_like(p) if g is None else g for p, g in zip(params, grads)]
            all_reduce_mean_(grads)
        for p, g in zip(params, grads):
            p.grad = g
        self.generator_optimizer_.step()
        if shard is not None:
            broadcast_tensors_(list(self.generator_.buffers()))
        self.n_generator_steps_ += 1

    def _shared_generator_step(self, pending, f_adv, g_adv, logits_adv):
        """The generator step of ``generator_step_mode="train"`` inside the
        classifier's step: its gradient comes from the classifier's own training
        forward pass of the synthesized batch and from the OT term computed for
        the classifier's loss (one forward pass and one OT solve serve both).
        ``g_adv`` is the OT term's gradient with respect to ``f_adv``."""
        x_gen, x_leaf, y = pending
        # <g_adv, f_adv> has the OT term's gradient with respect to everything below f_adv
        objective = (g_adv * f_adv).sum()
        if self.generator_ce_weight:
            objective = objective + self.generator_ce_weight * F.cross_entropy(logits_adv.float(), y)
        # d objective / d x_adv through the classifier (its weights get no gradient
        # here), then into the generator's graph kept from train_perturb
        (g,) = torch.autograd.grad(objective, x_leaf, retain_graph=True)
        params = [p for p in self.generator_.parameters() if p.requires_grad]
        grads = torch.autograd.grad(x_gen, params, grad_outputs=-g, allow_unused=True)
        self._apply_generator_grads(params, grads)

    # ------------------------------------------------------- training hooks
    def train_perturb(self, module, x, y):
        """One generator step; its synthesized batch is returned for the classifier.

        The batch is the one the generator step was computed on (sampled
        before the generator's update), so each training batch costs one
        generator forward pass. On batches without a generator step
        (``generator_every > 1``) a batch is sampled from the current generator.

        With ``generator_step_mode="train"`` (outside data-parallel training)
        the generator step is deferred to :meth:`regularizer`: the returned
        batch is a leaf that requires a gradient, and the classifier's own
        training forward pass on it, with the OT term of its loss, gives the
        generator's gradient, so the synthesized batch is forwarded once and
        the OT problem solved once per training batch instead of twice.

        Parameters
        ----------
        module : torch.nn.Module
            The classifier being trained (left unchanged here).
        x : torch.Tensor
            Clean batch on the module's device.
        y : torch.Tensor
            Class indices.

        Returns
        -------
        x_adv : torch.Tensor
            Detached synthesized batch.
        """
        self.__dict__.pop("_capture_due", None)
        if float(self.epsilon) == 0:  # epsilon warm-up: nothing to synthesize yet
            return x.clone()
        shard = current_shard()  # data-parallel: decide on the global batch, alike on every rank
        if (x.shape[0] if shard is None else shard.total) < 2:  # one sample: BatchNorm cannot train
            gen = self._ensure_generator(x)
            with eval_mode(gen), torch.no_grad():
                return self._synthesize(x).detach()
        self.n_train_batches_ = getattr(self, "n_train_batches_", 0) + 1
        self.__dict__.pop("_pending", None)
        step_due = (self.n_train_batches_ - 1) % self.generator_every == 0 \
            or getattr(self, "generator_", None) is None
        if step_due and self.generator_step_mode == "train" and shard is None and not self.resample:
            gen = self._ensure_generator(x)
            gen.train()
            with torch.enable_grad():
                x_gen = self._synthesize(x)
            x_adv = x_gen.detach().requires_grad_(True)
            self._pending = (x_gen, x_adv, y)
            self._capture_due = self.feature_layer is not None
            return x_adv
        if step_due and not self.resample:
            # the batch the generator step was computed on is the classifier's
            # batch: one generator forward pass per training batch, not two
            _, x_adv = self._generator_step(module, x, y, return_sample=True)
        else:
            if step_due:  # the authors' alternation: step, then a fresh sample
                self._generator_step(module, x, y)
            with torch.no_grad():
                x_adv = self._synthesize(x)
        self._capture_due = self.feature_layer is not None and bool(self.ot_weight)
        return x_adv.detach()

    def before_training_forward(self, module):
        """Record ``feature_layer``'s output in the classifier's training forward
        pass on the synthesized batch, which comes next, so :meth:`regularizer`
        needs no extra pass for it. Armed here rather than in
        :meth:`train_perturb`: adversarial weight perturbation forwards the
        batch in between, and its pass (at other weights, its graph already
        used) must not be the one recorded.

        Parameters
        ----------
        module : torch.nn.Module
            The classifier being trained.
        """
        if self.__dict__.pop("_capture_due", False):
            self._capture_next(module)

    def _capture_next(self, module):
        """Record ``feature_layer``'s output in the module's next forward pass."""
        self._release()
        store = self._captured = {}

        def record(f):
            store["f"] = f
            self._release()

        self._hook_handle = self._hook(module, record)

    def _release(self):
        handle = self.__dict__.pop("_hook_handle", None)
        if handle is not None:
            handle.remove()

    def regularizer(self, module, x, x_adv, y, logits_adv):
        """``ot_weight * OT(phi(x), phi(x_adv))`` plus the label-smoothing term.

        Called by :class:`~robustfit.AdversarialClassifier` in train mode right
        after its forward pass on ``x_adv``. The representation of ``x_adv`` is
        ``logits_adv`` or the output of ``feature_layer`` recorded during that
        pass; the clean batch costs one forward pass.

        Parameters
        ----------
        module : torch.nn.Module
            The classifier, in train mode.
        x, x_adv : torch.Tensor
            Clean and synthesized batches.
        y : torch.Tensor
            Class indices.
        logits_adv : torch.Tensor
            The classifier's logits on ``x_adv``, with the graph.

        Returns
        -------
        term : torch.Tensor or None
            Scalar added to the classifier's loss; ``None`` when there is
            nothing to add.
        """
        captured = self.__dict__.pop("_captured", {})
        self._release()
        pending = self.__dict__.pop("_pending", None)
        if pending is not None and pending[1] is not x_adv:
            pending = None
        term = None
        if (self.ot_weight or pending is not None) and x_adv is not x:
            if self.feature_layer is None:
                f_adv = logits_adv
            else:
                f_adv = captured.get("f")
                if f_adv is None or f_adv.shape[0] != x_adv.shape[0]:
                    f_adv, _ = self._features(module, x_adv)
            f_clean, _ = self._features(module, x)
            ot = self._ot(f_clean, f_adv)
            if pending is not None:
                # one backward pass through the OT solve serves both players: its
                # gradients with respect to the two representations go to the
                # generator step and, as a linear term with the same value and
                # gradient as the OT term, into the classifier's loss
                reps = [f for f in (f_clean, f_adv) if f.requires_grad]
                grads = torch.autograd.grad(ot, reps)
                self._shared_generator_step(pending, f_adv, grads[-1], logits_adv)
                linear = sum((g * f).sum() for g, f in zip(grads, reps))
                ot = ot.detach() + (linear - linear.detach())
            if self.ot_weight:
                term = self.ot_weight * ot
        if self.label_smoothing:
            logp = F.log_softmax(logits_adv.float(), dim=1)
            # (1 - s) CE(y) + s CE(uniform) = CE(y) + s (CE(uniform) - CE(y))
            smooth = self.label_smoothing * (-logp.mean(dim=1).mean() - F.nll_loss(logp, y))
            term = smooth if term is None else term + smooth
        return term

    # ------------------------------------------------------------ evaluation
    def _perturb(self, module, x, y):
        if float(self.epsilon) == 0:
            return x.clone()
        gen = self._ensure_generator(x)
        was_training = gen.training
        gen.eval()
        try:
            with torch.no_grad():
                return self._synthesize(x)
        finally:
            gen.train(was_training)

    def fit_generator(self, module, X, y, epochs=1, batch_size=128, random_state=None):
        """Train the generator against a fixed ``module``.

        Runs ``epochs`` passes of generator steps (the ascent of
        :meth:`train_perturb`) over shuffled batches of ``(X, y)``; the module's
        parameters, buffers and mode are left unchanged (with
        ``generator_step_mode="train"`` the steps run the module in train
        mode, which updates BatchNorm's running statistics: they are put back
        afterwards, so attacking a model does not alter it). A generator that
        already exists is trained further.

        Parameters
        ----------
        module : torch.nn.Module
            The classifier to attack.
        X : torch.Tensor or numpy.ndarray
            Clean inputs inside ``bounds``.
        y : torch.Tensor or numpy.ndarray
            Integer class indices.
        epochs : int, default=1
            Passes over the data.
        batch_size : int, default=128
            Samples per generator step.
        random_state : int or None, default=None
            Seeds the shuffling and the noise (the global torch generator is
            restored afterwards).

        Returns
        -------
        self : GeneratorSynth
        """
        self.validate_params()
        check_param(epochs, "epochs", [Interval(Integral, 1, None)], "fit_generator")
        check_param(batch_size, "batch_size", [Interval(Integral, 1, None)], "fit_generator")
        x, y = _as_tensors(module, X, y)
        check_in_bounds(x, self._bounds)
        buffers = [(b, b.detach().clone()) for b in module.buffers()]
        with torch_seeded(random_state), random_source(random_state), _buffers_restored(buffers):
            for _ in range(epochs):
                order = randperm(x.shape[0], device=x.device)
                for start in range(0, x.shape[0], batch_size):
                    idx = order[start:start + batch_size]
                    if idx.numel() < 2:  # BatchNorm needs two samples
                        continue
                    self._generator_step(module, x[idx], y[idx])
        return self

    # ------------------------------------------------------------ state
    def get_fitted_state(self):
        """The learned state, as plain values and tensors (no pickle needed).

        What :meth:`robustfit.AdversarialClassifier.save` and the training
        checkpoints store: the generator's weights and its optimizer's state
        (``state_dict()`` of each), the input shape and the step counters.

        Returns
        -------
        state : dict
            Empty before the generator exists.

        Examples
        --------
        >>> import torch
        >>> from robustfit.attacks import GeneratorSynth
        >>> net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16, 3))
        >>> X, y = torch.rand(8, 1, 4, 4), torch.randint(0, 3, (8,))
        >>> attack = GeneratorSynth(epsilon=0.1).fit_generator(net, X, y, random_state=0)
        >>> copy = GeneratorSynth(epsilon=0.1).set_fitted_state(attack.get_fitted_state())
        >>> first = [next(a.generator_.parameters()) for a in (attack, copy)]
        >>> copy.n_generator_steps_, bool(torch.equal(*first))
        (1, True)
        """
        state = {k: v for k, v in vars(self).items()
                 if k.endswith("_") and not k.startswith("_")
                 and k not in ("generator_", "generator_optimizer_")}
        if getattr(self, "generator_", None) is not None:
            state["generator_"] = self.generator_.state_dict()
            state["generator_optimizer_"] = self.generator_optimizer_.state_dict()
        return state

    def set_fitted_state(self, state):
        """Restore the state of :meth:`get_fitted_state` (the generator is rebuilt, then loaded).

        Parameters
        ----------
        state : dict
            From :meth:`get_fitted_state`.

        Returns
        -------
        self : GeneratorSynth
        """
        state = dict(state)
        weights = state.pop("generator_", None)
        optimizer = state.pop("generator_optimizer_", None)
        for key, value in state.items():
            setattr(self, key, tuple(value) if key == "input_shape_" else value)
        if weights is None:
            return self
        steps = getattr(self, "n_generator_steps_", 0)
        self.generator_ = None
        # the new generator's initial weights are overwritten at once: draw them
        # from a fork, so that loading leaves torch's global generator alone
        with torch_seeded(0):
            self._ensure_generator(torch.zeros((1, *self.input_shape_)))
        self.generator_.load_state_dict(weights)
        if optimizer is not None:
            self.generator_optimizer_.load_state_dict(optimizer)
        self.n_generator_steps_ = steps
        return self

    def __getstate__(self):
        state = self.__dict__.copy()
        state.pop("_captured", None)
        state.pop("_hook_handle", None)
        state.pop("_pending", None)
        state.pop("_capture_due", None)
        return state


@contextlib.contextmanager
def _buffers_restored(saved):
    """Copy the ``(buffer, saved value)`` pairs back on exit."""
    try:
        yield
    finally:
        with torch.no_grad():
            for buffer, value in saved:
                buffer.copy_(value)


@contextlib.contextmanager
def _train_mode(module):
    """Put ``module`` in train mode; restore every submodule's own mode on exit."""
    modes = [(m, m.training) for m in module.modules()]
    module.train()
    try:
        yield module
    finally:
        for m, training in modes:
            m.training = training
