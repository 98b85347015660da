import pytest

from sciar.errors import DataError
from sciar.tokenizer import CharTokenizer, VocabTokenizer, load_tokenizer, save_tokenizer

GROUPS = [
    {"name": "main", "tokens": ["P", "Fm", "F", "m", "-", "3", "4", "_sg ", " ", "\n", "x", "y", "z", ",", "data_"]},
    {"name": "sg", "tokens": ["Fm-3m", "P4mm", "P1"], "after": "_sg "},
]


def test_round_trip_and_context_group(tmp_path):
    tok = VocabTokenizer(GROUPS, special_tokens=["<unk>"])
    text = "data_P4\n_sg P4mm\nx, y, z\nFm-3m\n_sg Fm-3m\n"
    ids = tok.encode(text)
    assert tok.decode(ids) == text
    # after the context the space group is one token; elsewhere it is spelled out
    sg = tok.token_id("Fm-3m", "sg")
    assert ids.count(sg) == 1
    assert tok.token_id("P4mm", "sg") in ids
    assert tok.encode("Fm-3m") == [tok.token_id(t) for t in ["Fm", "-", "3", "m"]]
    save_tokenizer(tok, tmp_path / "t.json")
    tok2 = load_tokenizer(tmp_path / "t.json")
    assert tok2.encode(text) == ids and tok2.vocab == tok.vocab


def test_longest_match():
    tok = VocabTokenizer([{"name": "m", "tokens": ["a", "ab", "abc", "b", "c"]}])
    assert [tok.vocab[i] for i in tok.encode("abcab")] == ["abc", "ab"]


def test_unknown_text_is_an_error_or_unknown_token():
    tok = VocabTokenizer(GROUPS)
    with pytest.raises(DataError, match="outside the vocabulary"):
        tok.encode("data_Q")
    tok = VocabTokenizer(GROUPS, special_tokens=["<unk>"], unknown="<unk>")
    ids = tok.encode("data_Q")
    assert ids[-1] == tok.token_id("<unk>")


def test_char_tokenizer_round_trip():
    tok = CharTokenizer("abc\n", special_tokens=["<pad>"])
    assert tok.decode(tok.encode("abccba\n")) == "abccba\n"
    assert tok.vocab_size == 5
    with pytest.raises(DataError):
        tok.decode([99])
