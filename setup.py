from pathlib import Path

from setuptools import find_packages, setup

here = Path(__file__).parent
version = {}
for line in (here / "robustfit" / "__init__.py").read_text().splitlines():
    if line.startswith("__version__"):
        version["v"] = line.split("=")[1].strip().strip('"')

OPTIONAL_EXTRAS = {
    # the conditional Wasserstein distance and the transfer bound (POT); GeneratorSynth's OT
    # term is robustfit's own solver (geomloss, in "test", is the reference it is checked against)
    "ot": ["pot>=0.9"],
    "plot": ["matplotlib>=3.5"],  # plot_robustness_curve, the examples and notebooks
    "diffusion": ["diffusers>=0.30"],  # DiffusionProxy
    "vision": ["torchvision>=0.15"],  # models.ResNet18, load_mnist(download=True)
    "dask": ["dask[distributed]>=2024.1"],  # grid search on a Dask cluster (joblib's dask backend)
}
EXTRAS = {
    **OPTIONAL_EXTRAS,
    "all": sorted({req for reqs in OPTIONAL_EXTRAS.values() for req in reqs}),
    "test": ["pytest>=7", "nbclient>=0.7", "nbformat>=5", "ipykernel>=6", "ruff>=0.4",
             "hypothesis>=6", "imbalanced-learn>=0.12", "geomloss>=0.3"],
    "docs": ["sphinx>=7", "numpydoc>=1.6", "myst-nb>=1.0"],  # myst-nb: the tutorial pages
}

setup(
    name="robustfit",
    version=version["v"],
    description="Adversarially robust neural networks through the scikit-learn estimator API",
    long_description=(here / "README.md").read_text() if (here / "README.md").exists() else "",
    long_description_content_type="text/markdown",
    packages=find_packages(include=["robustfit", "robustfit.*"]),
    # numpy 2.4, scipy 1.17, scikit-learn 1.9 and the other pinned versions need Python 3.11
    # (docs/install.rst); older Pythons are not tested.
    python_requires=">=3.11",
    # The core: enough for every estimator, attack, loss and metric that needs no extra below.
    install_requires=[
        "torch>=2.0",
        "numpy>=1.22",
        "scipy>=1.8",
        "scikit-learn>=1.3",
        "skorch>=1.0",
        "joblib>=1.2",
        "tqdm>=4.60",
    ],
    # Optional parts; each feature that needs one raises an ImportError naming its extra
    # (robustfit._utils.OPTIONAL).
    extras_require=EXTRAS,
    license="BSD-3-Clause",
    classifiers=[
        "Programming Language :: Python :: 3",
        "Topic :: Scientific/Engineering :: Artificial Intelligence",
    ],
)
