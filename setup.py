from pathlib import Path

from setuptools import find_packages, setup

here = Path(__file__).parent
version = {}
for line in (here / "robustfit" / "__init__.py").read_text().splitlines():
    if line.startswith("__version__"):
        version["v"] = line.split("=")[1].strip().strip('"')

setup(
    name="robustfit",
    version=version["v"],
    description="Adversarially robust neural networks through the scikit-learn estimator API",
    long_description=(here / "README.md").read_text() if (here / "README.md").exists() else "",
    long_description_content_type="text/markdown",
    packages=find_packages(include=["robustfit", "robustfit.*"]),
    python_requires=">=3.9",
    install_requires=[
        "torch>=2.0",
        "torchvision>=0.15",
        "scikit-learn>=1.3",
        "skorch>=1.0",
        "numpy>=1.22",
        "joblib>=1.2",
        "pot>=0.9",
        "geomloss>=0.3",
        "tqdm>=4.60",
        "matplotlib>=3.5",
    ],
    extras_require={
        "test": ["pytest>=7", "nbclient>=0.7", "nbformat>=5", "ipykernel>=6", "ruff>=0.4",
                 "hypothesis>=6"],
        "docs": ["sphinx>=7", "numpydoc>=1.6"],
        "diffusion": ["diffusers>=0.30"],
    },
    license="BSD-3-Clause",
    classifiers=[
        "Programming Language :: Python :: 3",
        "Topic :: Scientific/Engineering :: Artificial Intelligence",
    ],
)
