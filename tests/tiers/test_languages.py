"""The language identifier behind a tier's ``languages`` option (py3langid)."""

from __future__ import annotations

from safecascade.tiers.languages import text_language, unread_language

FR = "Je voudrais réserver une table pour quatre personnes ce soir, s'il vous plaît."
DE = "Kannst du mir bitte erklären, wie die Photosynthese bei Pflanzen funktioniert?"
ZH = "请帮我写一首关于春天的短诗，描写花开和鸟鸣。"
EN = "Could you explain how photosynthesis works in plants, step by step?"


def test_text_language_names_the_language_or_none_when_unsure() -> None:
    assert [text_language(t) for t in (FR, DE, ZH, EN)] == ["fr", "de", "zh", "en"]
    assert text_language("") is None and text_language("12345 !!! ???") is None  # no letter
    assert text_language("ok") is None  # too short to be sure of any language
    assert text_language(EN, min_confidence=1.01) is None


def test_unread_language_passes_on_only_what_no_reading_makes_readable() -> None:
    assert unread_language([FR], ("en",)) == "fr"
    assert unread_language([FR, DE], ("en",)) == "fr"  # the first unread language is named
    assert unread_language([FR, EN], ("en",)) is None  # a decoded English reading is read
    assert unread_language([FR, "ok"], ("en",)) is None  # an unidentified reading is read
    assert unread_language([FR], ("en", "fr")) is None
    assert unread_language([FR], ()) is None  # no languages: every text is read


def test_a_texts_language_is_identified_once_for_both_tiers() -> None:
    """The static and the multilingual tier both ask about the same text: the identifier runs once
    per distinct first ``PREFIX_CHARS`` characters, and the answer does not depend on the cache."""
    from safecascade.tiers import languages

    text = "Quels sont les horaires d'ouverture du musée du Louvre le dimanche ? " * 20  # over PREFIX_CHARS
    languages._classify_head.cache_clear()
    first = text_language(text)
    misses = languages._classify_head.cache_info().misses
    assert first == "fr" and text_language(text) == first and text_language(text + "Also, what about Monday?") == first
    assert languages._classify_head.cache_info().misses == misses  # the same first characters: no second run
    assert text_language(text, min_confidence=1.01) is None  # the threshold is applied after the cache
    assert text_language("1234 !!") is None
