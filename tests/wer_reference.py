"""An independent word error rate for tests: corpus-level (total word edits / total reference words), from a plain
Levenshtein distance over words, to check the WER the runners record (jiwer) against what they wrote out."""


def word_edits(ref: list, hyp: list) -> int:
    """Levenshtein distance between two word lists (substitutions, insertions, deletions cost 1)."""
    prev = list(range(len(hyp) + 1))
    for i, r in enumerate(ref, 1):
        cur = [i]
        for j, h in enumerate(hyp, 1):
            cur.append(min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (r != h)))
        prev = cur
    return prev[-1]


def corpus_wer_from_tsv(path) -> float:
    """The greedy column's corpus WER of a run's ``test_hypotheses.tsv`` (``utt_id, reference, greedy, beam``)."""
    rows = [line.split("\t") for line in open(path, encoding="utf-8").read().splitlines()[1:]]
    edits = sum(word_edits(r[1].split(), r[2].split()) for r in rows)
    return edits / sum(len(r[1].split()) for r in rows)
