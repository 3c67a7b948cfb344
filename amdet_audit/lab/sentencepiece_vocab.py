"""SentencePiece vocabularies trained offline on the lab's prompts, written as SigLIP and T5 tokenizers.

Real SigLIP and T5 towers tokenize with SentencePiece unigram models; the lab's bidirectional bases do too, with
a vocabulary learnt from prompts (training takes well under a second). The vocabulary has byte fallback, so
characters it never saw (a Cyrillic look-alike, an emoji) become byte pieces in SigLIP, as in a real SigLIP
vocabulary; the T5 tokenizer, like real T5's, has no byte fallback and maps them to ``<unk>``.
Ids: 0 ``<pad>``, 1 ``</s>``, 2 ``<unk>``, 3 ``<mask>`` (the lab's masked-LM pretraining), then bytes and pieces.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from pathlib import Path

PAD_ID, EOS_ID, UNK_ID, MASK_ID = 0, 1, 2, 3
MASK_PIECE = "<mask>"
VOCAB_SIZE = 1600  # pieces (incl. 256 byte pieces); the prompts support about 1,760 at most
SIGLIP_LENGTH = 64  # SigLIP pads to 64 tokens
T5_EXTRA_IDS = 8  # <extra_id_N> sentinels appended, as T5 tokenizers append 100


def train_sentencepiece(prompts: Sequence[str], vocab_size: int = VOCAB_SIZE) -> bytes:
    """A unigram SentencePiece model (serialized) learnt from ``prompts``: deterministic for the same prompts."""
    import sentencepiece as spm

    buffer = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(list(prompts)), model_writer=buffer, vocab_size=vocab_size, model_type="unigram",
        byte_fallback=True, character_coverage=1.0, pad_id=PAD_ID, eos_id=EOS_ID, unk_id=UNK_ID, bos_id=-1,
        user_defined_symbols=[MASK_PIECE], num_threads=1, minloglevel=2, hard_vocab_limit=False)
    return buffer.getvalue()


def write_siglip_tokenizer(folder: Path, model: bytes, max_length: int = SIGLIP_LENGTH) -> Path:
    """Save a ``SiglipTokenizer`` (spiece.model, pad = ``</s>`` as in google/siglip-*) into ``folder``."""
    from transformers import SiglipTokenizer

    folder.mkdir(parents=True, exist_ok=True)
    (folder / "spiece.model").write_bytes(model)
    tokenizer = SiglipTokenizer(vocab_file=str(folder / "spiece.model"), model_max_length=max_length)
    tokenizer.save_pretrained(folder)
    return folder


def write_t5_tokenizer(folder: Path, model: bytes, max_length: int = 512) -> Path:
    """Save a ``T5Tokenizer`` (tokenizer.json from the SentencePiece model's pieces and scores) into ``folder``."""
    import sentencepiece as spm
    from transformers import T5Tokenizer

    processor = spm.SentencePieceProcessor(model_proto=model)
    vocab = [(processor.id_to_piece(i), processor.get_score(i)) for i in range(processor.get_piece_size())]
    tokenizer = T5Tokenizer(vocab=vocab, extra_ids=T5_EXTRA_IDS, model_max_length=max_length)
    folder.mkdir(parents=True, exist_ok=True)
    tokenizer.save_pretrained(folder)
    return folder


def piece_count(model: bytes) -> int:
    """How many pieces a serialized SentencePiece model holds."""
    import sentencepiece as spm

    return spm.SentencePieceProcessor(model_proto=model).get_piece_size()
