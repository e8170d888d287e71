"""Audio data layer: dataset readers -> manifest DataFrame, augmentation, synthetic eSpeak corpus, tf.data pipeline.

Every source yields the same manifest (columns ``path, label, speaker, split``), so training code treats Speech
Commands, FSDD, a CSV dataset and the synthetic corpus alike.
"""
from kws_quant.data.audio import (
    DEFAULT_SAMPLE_RATE,
    AudioFileError,
    BadFile,
    check_audio_file,
    find_bad_files,
    fit_length,
    load_audio,
    load_audio_files,
    summarize_bad_files,
    other_sample_rates,
    to_mono_rate,
    trim_silence,
    write_wav,
)
from kws_quant.data.augmentation import (
    AugmentConfig,
    augment,
    coloured_noise,
    mix_at_snr,
    power,
    random_gain,
    random_segment,
    change_speed,
    speed_perturb,
    time_shift,
)
from kws_quant.data.disk_cache import MODES as CACHE_MODES
from kws_quant.data.disk_cache import default_cache_root
from kws_quant.data.espeak import check_voice, list_voices, synthesize
from kws_quant.data.manifest import (
    COLUMNS,
    SILENCE_LABEL,
    SPLITS,
    UNKNOWN_LABEL,
    assign_speaker_splits,
    check_speaker_disjoint,
    relabel_unknown,
    validate_manifest,
)
from kws_quant.data.pipeline import label_indices, make_dataset
from kws_quant.data.readers import (
    DIGIT_WORDS,
    read_csv_manifest,
    read_fsdd,
    read_audio_folder,
    read_speech_commands,
    read_sphinx,
    require_evaluation_folder,
    speech_commands_speaker,
)
from kws_quant.data.wakeword import corpus_layout, read_wakeword_corpus
from kws_quant.data.spec_augment import SpecAugmentConfig, spec_augment
from kws_quant.data.synthetic import DEFAULT_VOICES, SyntheticConfig, default_cache_dir, keyword_label, synthetic_corpus
from kws_quant.data.vocabulary import NON_KEYWORDS

__all__ = [
    "AudioFileError", "AugmentConfig", "BadFile", "CACHE_MODES", "COLUMNS", "DEFAULT_SAMPLE_RATE", "DEFAULT_VOICES", "DIGIT_WORDS",
    "NON_KEYWORDS", "SILENCE_LABEL", "SPLITS", "SpecAugmentConfig", "SyntheticConfig", "UNKNOWN_LABEL", "assign_speaker_splits", "augment",
    "check_audio_file", "check_speaker_disjoint", "check_voice", "coloured_noise", "default_cache_dir", "default_cache_root",
    "find_bad_files", "fit_length", "keyword_label", "label_indices", "list_voices", "load_audio", "load_audio_files",
    "make_dataset", "mix_at_snr", "power", "random_gain", "random_segment", "read_csv_manifest", "read_fsdd",
    "read_audio_folder", "read_speech_commands", "read_sphinx", "read_wakeword_corpus", "corpus_layout", "relabel_unknown", "require_evaluation_folder", "spec_augment", "speech_commands_speaker", "change_speed", "speed_perturb", "summarize_bad_files", "synthesize", "synthetic_corpus", "time_shift",
    "other_sample_rates", "to_mono_rate", "trim_silence", "validate_manifest", "write_wav",
]
