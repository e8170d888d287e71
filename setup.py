"""kws-quant: sub-8-bit quantization-aware training for on-device speech models (Keras 3)."""
from setuptools import find_packages, setup

setup(
    name="kws-quant",
    version="0.1.0",
    description="Sub-8-bit QAT for keyword spotting and RNN-T speech recognition (Keras 3 / TensorFlow)",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    license="Apache-2.0",
    python_requires=">=3.11,<3.13",
    packages=find_packages(include=["kws_quant*", "asr_ext*", "eval*"]),
    package_data={"": ["*.json"]},
    install_requires=[
        "tensorflow>=2.21,<2.22",
        "keras>=3.12,<4",
        "numpy>=1.26",
        "librosa>=0.10,<0.12",
        "soundfile>=0.12",
        "pandas>=2.0",
        "absl-py>=1.4",  # TF-MOT 0.8 (the [tfmot] extra) pins absl-py~=1.2
        "ml-collections>=1.0,<2",
        "matplotlib>=3.8",
        "scikit-learn>=1.4",
        "espeakng-loader>=0.2.4,<0.3",
        "jiwer>=3.0",
        "tqdm>=4.60",
        "tensorboard>=2.20",
        # the LiteRT interpreter of the export checks (tf.lite's is deprecated); 2.3 has wheels for every platform
        # TensorFlow 2.21 has (Linux x86-64/ARM64, macOS ARM64, Windows x86-64)
        "ai-edge-litert>=2.3",
    ],
    extras_require={
        "dev": ["pytest>=8", "pytest-xdist>=3.5", "hypothesis>=6.100",  # hypothesis: fuzz tests of the readers
                "import-linter>=2.0"],  # the dependency contracts of .importlinter (tests/test_structure.py)
        "litert": [],  # kept for old install commands: ai-edge-litert is a core dependency
        # Legacy bridge only: importing TF-MOT switches Keras to tf_keras. Never imported by the core.
        "tfmot": ["tensorflow-model-optimization>=0.8,<0.9", "tf-keras>=2.21,<2.22"],
    },
    entry_points={
        "console_scripts": [
            "kws-quant-train=kws_quant.train:run",
            "kws-quant-report=eval.report:run",
            "asr-ext-train=asr_ext.train:run",
        ]
    },
)
