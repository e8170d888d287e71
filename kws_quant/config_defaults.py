"""Defaults shared by the KWS experiment configs in configs/. Every field can be overridden: --config.train.float_epochs=3."""
import ml_collections

from kws_quant.features import feature_config_defaults


def kws_config() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.name = "kws"
    c.seed = 0

    c.data = ml_collections.ConfigDict()
    c.data.source = "synthetic"            # synthetic | fsdd | speech_commands | wakeword | csv
    c.data.data_dir = ""                   # folder (fsdd, speech_commands) or CSV file (csv); --data_dir sets it
    c.data.keywords = ("hey computer",)    # keyword classes; other labels become _unknown_
    c.data.validation_speakers = ()        # explicit speaker-disjoint split (fsdd/csv); empty: by fractions
    c.data.test_speakers = ()
    c.data.split_fractions = (0.8, 0.1, 0.1)
    c.data.validation_fraction = 0.0       # > 0: validation from train speakers' clips (few-speaker corpora)
    c.data.clip_seconds = 1.0
    c.data.batch_size = 64
    c.data.augment = True
    c.data.snr_db = (5.0, 25.0)
    c.data.gain_db = (-6.0, 6.0)
    c.data.max_shift_seconds = 0.1
    c.data.speed = (1.0, 1.0)              # speed-perturbation range, e.g. (0.9, 1.1)
    c.data.spec_augment = ml_collections.ConfigDict(dict(  # feature masks on training batches (with augment); 0: off
        time_masks=0, time_width=10, freq_masks=0, freq_width=5))
    c.data.keyword_oversample = 1          # repeat the keywords' training clips this many times (rare wake words)
    c.data.trim_db = 0.0                   # > 0: trim speech clips to their voiced part (dB below peak) first
    c.data.wakeword = ml_collections.ConfigDict(dict(  # source=wakeword: folders under --data_dir
        positives="alexa", negatives=("speech_commands", "an4", "fsdd")))
    c.data.cache_dir = ""                  # synthetic audio cache; empty: ~/.cache/kws_quant/synthetic
    c.data.feature_cache = "auto"          # decoded features/audio between epochs: auto (disk beyond 1 GiB) | memory
                                           # | disk (shards, reused by later runs) | none
    c.data.feature_cache_dir = ""          # disk shards; empty: $KWS_QUANT_CACHE or ~/.cache/kws_quant, /features
    c.data.synthetic = ml_collections.ConfigDict(dict(
        clips_per_keyword=800, unknown_clips=1200, silence_clips=300, seed=0))

    c.features = ml_collections.ConfigDict(feature_config_defaults())  # kws_quant.features.FeatureConfig

    c.model = ml_collections.ConfigDict(dict(  # kws_quant.models.KWSModelConfig
        arch="dnn",                        # dnn (the paper's) | tdnn | dscnn | tcresnet | crnn (streaming zoo)
        pool=2,                            # dnn: frames averaged before the first dense layer
        hidden=(),                         # widths; () = the arch's default (dnn: 112, 112, 112; zoo: ARCH_DEFAULTS)
        dropout=0.1,
        kernel_size=0,                     # zoo: depthwise/stem taps; 0 = the arch's default
        hop=2))                            # zoo: first conv's stride = frames per streaming step

    c.train = ml_collections.ConfigDict()
    c.train.float_epochs = 12
    c.train.learning_rate = 2e-3
    c.train.stage1_epochs = 4              # QAT: weights quantized (METHODS §3 stage 1)
    c.train.stage2_epochs = 4              # QAT: + inputs, activations, biases, batch-norm (stage 2)
    c.train.qat_learning_rate = 5e-4
    c.train.qat_init_from_float = True     # start QAT from the float model's weights
    c.train.ema_momentum = 0.0             # > 0: validate and keep the weights' moving average
    c.train.seed = -1                      # initialisation, shuffling, augmentation; -1: config.seed (the split's)
    c.train.jit_compile = True             # XLA train step (QAT then costs what float costs)

    c.report = ml_collections.ConfigDict(dict(  # eval.report at the end of the run: streaming DET + memory
        enabled=True, negative_hours=0.5, hop_frames=2, n_boot=200,
        snr_db=20.0,                       # stream noise, dB below the speech
        dataset_noise=False,               # noise bed from the dataset's noise files (else coloured noise)
        fa_targets=(1.0, 2.0, 5.0)))       # FRR reported at these false accepts per hour

    c.export = ml_collections.ConfigDict(dict(  # per QAT phase: <workdir>/<phase>/export/, checked on the test split
        enabled=True, int4=True, split_front_end=True, pack_presets=("nna-5bit",), output_margin=0.25))

    c.qat = ml_collections.ConfigDict()
    c.qat.recipes = ("tanh4",)             # kws_quant.models.recipes presets, one QAT model each
    c.qat.ptq_recipes = ()                 # post-training baselines (phase ptq_<recipe>): float weights, no QAT
    c.qat.ptq_calibration_windows = 1024   # training windows that set their activation ranges
    return c
