"""What the rules judge reads in the parse of an answer's focus window (a sentence or two): whether
it is about what a question asks about, and whether it says what the question asks of it. A
passage that merely mentions a question's things ("major town centers in Albania are being
redesigned" for "what is Albania?", "the CNT, founded in 1910" for "who founded the CNT?", "Achilles
from Leuce island was venerated as master of the Pontic Sea" for "where is Leuce island?") names
them without answering; these checks tell the two apart from the dependency parse, with no model
beyond spaCy's small English pipeline."""

from __future__ import annotations

import re

from spacy.tokens import Token

from fi_method.templating.rules_genericizer import parse

# The dependencies that make a mention what its clause is about or does something to: its
# subject, what the subject is ("X is a Y", "the capital is X") and what the verb is done to. A
# mention inside another noun's modifier ("the lives of Albanians", "Albania's constitution") is
# a detail of that noun.
_ARGUMENTS = frozenset({"nsubj", "nsubjpass", "attr", "dobj"})
# Links a mention climbs to reach the phrase that plays its role: a conjunct ("Muslims, Sikhs and
# Hindus live"), a name or adjective inside a longer name ("the Austroasiatic languages").
_CLIMB = frozenset({"conj", "compound", "amod"})
# What a place is given by: "in Y", "at Y", "located within Y", "came from Y", "east of Y".
_PLACE_PREPOSITIONS = frozenset(
    {"in", "at", "on", "near", "within", "inside", "between", "across", "throughout", "along"}
    | {"off", "from", "around", "beside", "outside", "into", "under", "over", "among"}
)
_DIRECTIONS = frozenset(
    {"north", "south", "east", "west", "northeast", "northwest", "southeast", "southwest"}
    | {"northern", "southern", "eastern", "western", "part", "coast", "border", "side"}
)
# Verbs whose object or agent is a neighbouring place: "It borders Pakistan", "bordered by Libya".
_BORDERING = frozenset({"border", "surround", "neighbour", "neighbor", "adjoin"})
# What lies around a place: "near Y", "around Y", "next to Y"; or what borders it (_BORDERING).
_BESIDE = frozenset({"near", "around", "beside", "to", "with"})
_PLACE_LABELS = frozenset({"GPE", "LOC", "FAC"})
# What a clause says of its subject besides the verb: "is a country located in Y", "is in Y".
_PREDICATES = frozenset({"attr", "acomp", "oprd", "dobj", "xcomp", "advmod", "npadvmod"})
# "X is called Y", "X is known as Y": what X is called.
_NAMING = frozenset({"call", "name", "know", "term", "refer"})
_RELATIVE = frozenset({"who", "which", "that", "whom"})
_PERSONAL = frozenset({"he", "she", "they", "it", "we", "i"})
# How far up a mention climbs to the phrase that plays its role.
MAX_CLIMB = 4
# "What is X known for?" asks what X is known for, and a passage answers it in any of these words
# ("X is famous for ...", "X is best remembered for ...").
KNOWN_FOR = frozenset(
    {"know", "known", "famous", "noted", "note", "renowned", "remember", "celebrated", "notable"}
)


def _without_article(value: str) -> str:
    """A value as a window names it: without a leading article ("the Eiffel Tower")."""
    return re.sub(r"^(?:the|a|an)\s+", "", value.strip(), flags=re.IGNORECASE)


def _mentions(doc, value: str) -> list[Token]:
    """The root token of each mention of `value` in a parsed window: where the window says it
    (an article aside) and not as part of a longer name ("Princess Louise Caroline Alberta" does
    not mention Alberta); where it never says it whole, for a value that ends on a common noun,
    each token that is that noun ("the earthquakes" for "Hindu Kush earthquakes")."""
    name = _without_article(value)
    if not name:
        return []
    found = []
    for match in re.finditer(rf"(?<!\w){re.escape(name)}(?!\w)", doc.text, re.IGNORECASE):
        span = doc.char_span(match.start(), match.end(), alignment_mode="expand")
        if span is None:
            continue
        root = span.root
        inside = range(span.start, span.end)
        longer = root.dep_ == "compound" and root.head.pos_ == "PROPN" and root.head.i not in inside
        longer = longer or any(
            child.dep_ == "compound" and child.i not in inside for child in root.children
        )
        if not longer:
            found.append(root)
    last = name.split()[-1]
    if not found and last.islower():
        found = [token for token in doc if token.lower_ == last]
    return found


def _is_apposition(token: Token) -> bool:
    """Whether a token the parser hangs as an apposition stands beside a noun that plays its
    role ("the capital, Tirana, is ..."). A vocative ("Alright, X, I have ...") or an address
    after someone's noun ("thanks for my question, X") is parsed as one too, and is not."""
    head = token.head
    return (
        token.dep_ == "appos"
        and head.pos_ in ("NOUN", "PROPN")
        and not any(child.dep_ == "poss" and child.pos_ == "PRON" for child in head.children)
    )


def _as_argument(token: Token, asked: frozenset[str]) -> Token | None:
    """The phrase through which a mention is an argument of its clause (_ARGUMENTS), or None:
    it climbs conjuncts, names inside names, appositions to the noun they stand beside, and "of"
    after one of the question's own nouns ("the headquarters of X" for "where is the
    headquarters of X")."""
    for _ in range(MAX_CLIMB):
        if token.dep_ in _ARGUMENTS:
            return token
        if (token.dep_ in _CLIMB or _is_apposition(token)) and token.head.i != token.i:
            token = token.head
        elif (
            token.dep_ == "pobj"
            and token.head.lower_ == "of"
            and token.head.head.lemma_.lower() in asked
        ):
            token = token.head.head
        else:
            return None
    return None


def _clause(token: Token) -> Token:
    """The verb (or root) of the clause a token belongs to."""
    while token.pos_ not in ("VERB", "AUX") and token.head.i != token.i:
        token = token.head
    return token


# A glossary's or a list's entry: a line that opens on a term (after a list marker, in bold or
# not, a parenthesis after it) and goes on after a colon to say what it is, in the third person
# ("1. User Management Microservice: This microservice will handle ..."). A heading on a line of
# its own says nothing, nor does a speaker's line in a dialogue ("Grumpy Cat: Well, I think ...").
_ENTRY = (
    r"(?im)^[ \t]*(?:[-*•]|\d+[.)])?[ \t]*(?:\*\*)?{term}(?:\*\*)?"
    r"(?:[ \t]*\([^)\n]*\))?(?:\*\*)?[ \t]*:[ \t]*(?P<said>\w[^\n]*)"
)
# How a description opens that says what its term is without naming it again: "a" or "an", or
# in lower case ("a framework for ...", "open-source container orchestration"). "The Maya could
# have continued ..." under "Continued Cultural Development:" says what would happen, not what it is.
_DESCRIPTION_OPENING = re.compile(r"[Aa]n?\b|[a-z]")
ENTRY_OPENING_WORDS = 10
_SPEAKING = re.compile(r"\b(?:i|me|my|we|us|our|you|your)\b", re.IGNORECASE)


def is_an_entry_for(window: str, thing: str) -> bool:
    """Whether a line of the window is an entry for `thing`: the term, a colon, then on the
    same line a description of it in the third person that opens with "a" or "an" or in lower
    case, or names the term's last word again ("This microservice will handle ...")."""
    name = _without_article(thing)
    if not name:
        return False
    last = re.escape(name.split()[-1])
    for entry in re.finditer(_ENTRY.format(term=re.escape(name)), window):
        # Its opening words: where a speaker says "I" and a description names its term.
        said = " ".join(entry.group("said").split()[:ENTRY_OPENING_WORDS])
        if _SPEAKING.search(said):
            continue
        if _DESCRIPTION_OPENING.match(said) or re.search(rf"\b{last}\b", said, re.IGNORECASE):
            return True
    return False


def is_about(window: str, values: list[str], asked: frozenset[str]) -> bool:
    """Whether the window is about one of `values`: it mentions one as the subject, the
    predicate or the object of a clause with a verb (or beside one, in apposition), not as a
    detail of another noun, nor in a heading, nor addressed by name; or it is an entry for one
    (is_an_entry_for). `asked`: the question's own words (lower-case, and their lemmas)."""
    if any(is_an_entry_for(window, value) for value in values):
        return True
    doc = parse(window)
    for value in values:
        for mention in _mentions(doc, value):
            argument = _as_argument(mention, asked)
            if argument is not None and _clause(argument).pos_ in ("VERB", "AUX"):
                return True
    return False


def asked_known_for(question) -> str | None:
    """X, for a parsed "what is X known for?" ("famous for", "remembered for", ...), or None.
    Not for "what tradition were X known for?", which names what it asks for, and whose passage
    may say it in other words ("a tradition of singing had developed and achieved fame")."""
    if len(question) < 4 or question[0].lower_ != "what" or question[1].lemma_ != "be":
        return None
    for word in question:
        if not _known_for(word):
            continue
        subject = next((c for c in word.children if c.dep_ in ("nsubj", "nsubjpass")), None)
        if subject is None and word.dep_ in ("acl", "amod"):
            subject = word.head
        if subject is None or subject.i == question[0].i:
            return None
        kept = [t for t in subject.subtree if t.i < word.i or t.i > word.right_edge.i]
        return "".join(t.text_with_ws for t in kept).strip().rstrip("?").strip() or None
    return None


def says_known_for(window: str, thing: str) -> bool:
    """Whether the window says what `thing` is known for: a sentence that mentions it and says
    something is known, famous, noted or remembered for what follows ("Benares is known for its
    ghats")."""
    doc = parse(window)
    sentences = {mention.sent.start for mention in _mentions(doc, thing)}
    return any(token.sent.start in sentences and _known_for(token) for token in doc)


def _known_for(token: Token) -> bool:
    """Whether a token is "known for", "famous for", "remembered for" (KNOWN_FOR)."""
    return (token.lemma_.lower() in KNOWN_FOR or token.lower_ in KNOWN_FOR) and any(
        child.lower_ == "for" for child in token.children
    )


def _set_off_by_comma(token) -> bool:
    before = token.left_edge.i - 1
    return before >= 0 and token.doc[before].text == ","


def _described_by_apposition(mention) -> bool:
    """Whether an apposition says what a mention is: "X, a Y" (a common noun set off by a comma),
    "the Y, X" (beside a noun that is not someone's, as in "thanks for my question, X") or a title
    right before a name ("the president Bujar Nishani" says who the president is). A
    vocative ("Alright, X, I have ...") or a speaker's line ("X: (laughs) Well ...") is parsed as
    an apposition too, and says nothing of X."""
    if _is_apposition(mention) and mention.head.pos_ == "NOUN" and _set_off_by_comma(mention):
        return True
    return any(
        child.dep_ == "appos"
        and (
            (child.pos_ == "NOUN" and _set_off_by_comma(child))
            # A title before a name: "the current president Bujar Nishani".
            or (mention.pos_ == "NOUN" and child.left_edge.i == mention.i + 1)
        )
        for child in mention.children
    )


def defines(window: str, thing: str) -> bool:
    """Whether the window says what `thing` is: "X is a Y" (a noun after the copula), "Y is X",
    "X, a Y", or a title before a name ("the current president Bujar Nishani"); not "X is named
    after ..." nor "X's capital is ...". A name given beside another ("The Computer Science
    Network (CSNET) was a computer network") is defined where that one is. An entry for it
    (is_an_entry_for) says what it is too."""
    if is_an_entry_for(window, thing):
        return True
    doc = parse(window)
    for mention in _mentions(doc, thing):
        if _described_by_apposition(mention) or _defined_as(mention):
            return True
        if mention.dep_ == "appos" and _defined_as(mention.head):
            return True
    return False


def _defined_as(mention: Token) -> bool:
    """Whether the clause a mention stands in says what it is: "X is a Y", "Y is X", "the N
    Name", "X is called Y"."""
    head = mention.head
    if mention.dep_ == "attr" and head.lemma_ == "be":
        return True
    if (
        mention.dep_ in ("nsubj", "nsubjpass")
        and head.lemma_ == "be"
        and any(child.dep_ == "attr" for child in head.children)
    ):
        return True
    if mention.dep_ == "compound" and head.pos_ == "PROPN" and mention.pos_ == "NOUN":
        return True
    # "X is called Y", "X is known as Y"; not "X is known by many" nor "X is named after Y".
    return (
        mention.dep_ == "nsubjpass"
        and head.lemma_ in _NAMING
        and not any(c.lower_ == "after" for c in head.children)
        and any(
            (c.dep_ in ("oprd", "attr") and c.pos_ in ("PROPN", "NOUN")) or c.lower_ == "as"
            for c in head.children
        )
    )


def _doer(verb: Token) -> Token | None:
    """Who does what a verb says: its subject; the agent of a passive ("founded by Y", wherever
    the parser hangs "by Y" in the verb's phrase); a relative pronoun stands for the noun its
    clause belongs to ("Y, who founded X"); a participle or a second verb without a subject
    shares its clause's ("William conquered England, killing Harold")."""
    for child in verb.children:
        if child.dep_ in ("nsubj", "csubj"):
            return verb.head if child.lower_ in _RELATIVE and verb.dep_ == "relcl" else child
    if any(child.dep_ in ("auxpass", "nsubjpass") for child in verb.children) or verb.tag_ == "VBN":
        for token in verb.subtree:
            if token.lower_ == "by" and _clause(token).i == verb.i:
                return next((c for c in token.children if c.dep_ == "pobj"), None)
        return None
    if verb.dep_ in ("conj", "advcl", "xcomp") and verb.head.pos_ in ("VERB", "AUX"):
        return _doer(verb.head)
    return None


def names_the_doer(text: str, verb_lemma: str, asked: frozenset[str]) -> bool | None:
    """For "who <verb> X?": whether the text says who did it, a doer of the verb that is not
    one of the question's own words. None when the text does not use the verb (the question
    may paraphrase its passage: other checks judge that)."""
    doc = parse(text)
    uses = [token for token in doc if token.pos_ == "VERB" and token.lemma_.lower() == verb_lemma]
    if not uses:
        return None
    for verb in uses:
        doer = _doer(verb)
        if doer is None:
            continue
        if doer.lower_ in _PERSONAL or doer.pos_ in ("PROPN", "NOUN"):
            # The doer's whole name: "Duke William II" is not the question's "Harold II".
            name = [t for t in doer.subtree if t.i == doer.i or t.dep_ == "compound"]
            if not all(t.lemma_.lower() in asked or t.lower_ in asked for t in name):
                return True
    return False


def _attaches_to(token: Token, anchors: set[int], beside: bool = False) -> bool:
    """Whether a place is said of an anchor: its phrase climbs through prepositions of place and
    the nouns they qualify ("in the Kabylie region east of Algiers") to an anchor token."""
    placed = False
    for _ in range(2 * MAX_CLIMB):
        if token.dep_ in ("conj", "appos", "compound"):
            token = token.head
            continue
        if token.dep_ == "pobj":
            preposition = token.head
            if beside:
                placed = placed or preposition.lower_ in _BESIDE
            elif preposition.lower_ in _PLACE_PREPOSITIONS or (
                preposition.lower_ == "of" and preposition.head.lower_ in _DIRECTIONS
            ):
                placed = True
            if preposition.dep_ == "agent" and preposition.head.lemma_.lower() in _BORDERING:
                placed = True
            token = preposition.head
            if placed and token.i in anchors:
                return True
            continue
        if token.dep_ == "dobj" and token.head.lemma_.lower() in _BORDERING:
            return token.head.i in anchors
        if token.dep_ in ("npadvmod", "advmod") and token.lower_ in _DIRECTIONS and not beside:
            # "north of Y" hangs from the verb: "lies north of Y".
            token = token.head
            if placed and token.i in anchors:
                return True
            continue
        return False
    return False


def places(window: str, values: list[str], asked: frozenset[str], beside: bool = False) -> bool:
    """For "where is X?": whether the window places one of `values` (a place named after a
    preposition of place in X's own clause: "X is a country located within Y", "X, which
    originated in Y", "X is bordered by Y"), not a place said of something else in the same
    sentence ("Achilles from X was venerated as master of the Pontic Sea"). `beside`: the
    question asks what lies around X, so only a place said to border it or lie near it counts."""
    doc = parse(window)
    places_found = [entity for entity in doc.ents if entity.label_ in _PLACE_LABELS]
    if not places_found:
        return False
    for value in values:
        for mention in _mentions(doc, value):
            argument = _as_argument(mention, asked)
            if argument is None:
                continue
            verb = _clause(argument)
            # A subject's head is what the clause says of it, a verb or a noun ("makes Egypt a
            # country with ...").
            predicate = argument.head if argument.dep_ in ("nsubj", "nsubjpass") else verb
            anchors = {argument.i, mention.i, verb.i, predicate.i}
            for token in (verb, predicate, argument):
                for child in token.children:
                    if child.dep_ in _PREDICATES or child.dep_ in ("acl", "relcl"):
                        anchors.add(child.i)
                        # "is a country located within Y": the participle of the predicate.
                        anchors.update(
                            grand.i for grand in child.children if grand.dep_ in ("acl", "relcl")
                        )
            for place in places_found:
                # A place inside the value or the question ("the Republic of Albania") is not
                # where the answer puts it.
                said = place.text.lower()
                if said in value.lower() or all(w.lower() in asked for w in said.split()):
                    continue
                if _attaches_to(place.root, anchors, beside):
                    return True
    return False
