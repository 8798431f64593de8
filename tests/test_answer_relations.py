"""What the rules judge reads in an answer's parse: whether its focus is about the question's
things, says what a thing is, names who did what a "who" question asks, and places what a
"where" question asks about. Each sentence is from the demo's Wikipedia passages; each "no" case
is a pair the pipeline instantiated and the judge at rules-5 kept."""

import pytest

from fi_method.synthesis.answer_relations import (
    asked_known_for,
    defines,
    is_about,
    is_an_entry_for,
    names_the_doer,
    places,
)
from fi_method.synthesis.judge import MIN_JUDGE_SCORE
from fi_method.synthesis.rules_judge import rules_judge
from fi_method.templating.rules_genericizer import parse
from fi_method.templating.templates import slot_values


@pytest.mark.parametrize(
    ("window", "value", "about"),
    [
        ("Muslims, Sikhs, Buddhists, and Hindus live in Alberta.", "Muslims", True),
        (
            (
                "The youngest person to fly in space is Gherman Titov, who was 25 years old when he "
                "flew Vostok 2."
            ),
            "Gherman Titov",
            True,
        ),
        ("Zosimos of Panopolis wrote the oldest known books on alchemy.", "books", True),
        # A detail of another noun: the town centres, the constitution.
        (
            (
                "As part of the reform, major town centers in Albania are being physically "
                "redesigned and façades painted to reflect a more Mediterranean look."
            ),
            "Albania",
            False,
        ),
        (
            "Albania's Communist constitution did not allow taxes on individuals.",
            "Albania",
            False,
        ),
        # A heading says nothing of what it names.
        ("=== Einstein–Cartan theory ===", "Einstein–Cartan theory", False),
        # Beside the subject, in apposition, a name plays the subject's role.
        ("The capital, Tirana, is home to a third of the country.", "Tirana", True),
        # Addressed by name, in a dialogue, a name is not what the line is about.
        ("Chai: Alright, Grumpy Cat, I have a question for you now.", "Grumpy Cat", False),
        ("Well, thanks for answering my question, Grumpy Cat.", "Grumpy Cat", False),
    ],
)
def test_a_window_is_about_a_value_it_makes_an_argument_of_a_clause(window, value, about):
    assert is_about(window, [value], frozenset()) is about


@pytest.mark.parametrize(
    ("window", "thing", "defined"),
    [
        (
            (
                "Algeria ( ; Dzayer), officially People's Democratic Republic of Algeria, is a "
                "sovereign state in North Africa on the Mediterranean coast."
            ),
            "Algeria",
            True,
        ),
        (
            "The current Albanian president Bujar Nishani was elected in July 2012.",
            "president",
            True,
        ),
        ("Alberta is named after Princess Louise Caroline Alberta (1848–1939).", "Alberta", False),
        ("Aristotle, a Greek philosopher, taught Alexander the Great.", "Aristotle", True),
        (
            "The Computer Science Network (CSNET) was a computer network funded by the NSF.",
            "CSNET",
            True,
        ),
        ("The band's singer, Freddie Mercury, wrote the song.", "Freddie Mercury", True),
        # A role-play's vocative, a speaker's line and a thank-you name the cat; none says what
        # it is (a pair "what was Grumpy Cat?" of ShareGPT's dialogue was kept at score 5).
        ("Chai: Alright, Grumpy Cat, I have a question for you now.", "Grumpy Cat", False),
        ("Grumpy Cat: (laughs) Well, as a cat, I think it is in my nature.", "Grumpy Cat", False),
        ("Well, thanks for answering my question, Grumpy Cat.", "Grumpy Cat", False),
        ("The capital of Alabama is Montgomery.", "Alabama", False),
        ("English is known by many; its usage has grown due to tourism.", "English", False),
        # What a thing is called may be a common noun as well as a name.
        ("Members of the Government of Angola are called ministers.", "members", True),
        (
            "The President of Azerbaijan appoints the governors of these units.",
            "president",
            False,
        ),
    ],
)
def test_a_definition_says_what_the_thing_is(window, thing, defined):
    assert defines(window, thing) is defined


@pytest.mark.parametrize(
    ("window", "thing", "entry"),
    [
        # ShareGPT answers the judge at rules-16 refused as "about something else".
        (
            (
                "1. User Management Microservice: This microservice will handle user "
                "authentication, authorization, and profile management."
            ),
            "User Management Microservice",
            True,
        ),
        (
            (
                "National Park Service (United States): The U.S. National Park Service (NPS) is "
                "responsible for managing and protecting national parks."
            ),
            "National Park Service",
            True,
        ),
        ("**SEO**: a set of practices that raise a site in search results.", "SEO", True),
        # A heading alone on its line, a term inside a sentence, and a dialogue's speaker.
        ("National Park Service:\n\nVisitors come in summer.", "National Park Service", False),
        (
            "The plan for User Management Microservice: this service will handle it.",
            "User Management Microservice",
            False,
        ),
        ("Grumpy Cat: Well, as a cat, I think it is in my nature.", "Grumpy Cat", False),
        ("Narrator: Lahaina was once a capital.", "Narrator", False),
    ],
)
def test_a_glossary_entry_says_what_its_term_is(window, thing, entry):
    assert is_an_entry_for(window, thing) is entry
    if entry:
        assert defines(window, thing)


@pytest.mark.parametrize(
    ("text", "verb", "asked", "named"),
    [
        (
            (
                "One notable exception was the Berlin Society of Anthropology (1869) founded by "
                "Rudolph Virchow, known for his vituperative attacks on the evolutionists."
            ),
            "found",
            {"berlin", "society", "anthropology"},
            True,
        ),
        (
            "Ibn Manzur and Ibn Khaldoun, who wrote the Muqaddimah while staying in Algeria.",
            "write",
            {"muqaddimah"},
            True,
        ),
        (
            (
                "In 1066, Duke William II of Normandy conquered England killing King Harold II at "
                "the Battle of Hastings."
            ),
            "kill",
            {"harold", "ii"},
            True,
        ),
        # Founded, but by whom the passage never says.
        (
            (
                "The most successful was the Confederación Nacional del Trabajo (CNT), founded in "
                "1910. The CNT was affiliated with the International Workers Association, a "
                "federation of anarcho-syndicalist trade unions founded in 1922."
            ),
            "found",
            {"cnt"},
            False,
        ),
        ("Alaska has few road connections compared to the rest of the U.S.", "found", set(), None),
    ],
)
def test_who_did_it_is_the_doer_of_the_questions_verb(text, verb, asked, named):
    assert names_the_doer(text, verb, frozenset(asked)) is named


@pytest.mark.parametrize(
    ("window", "value", "beside", "placed"),
    [
        (
            (
                "Afghanistan (Pashto/Dari: , Afġānistān), officially the Islamic Republic of "
                "Afghanistan, is a landlocked country located within South Asia and Central Asia."
            ),
            "Afghanistan",
            False,
            True,
        ),
        (
            (
                "This makes Egypt a transcontinental country, with the Sinai peninsula in Asia and "
                "the remainder of the country in Africa."
            ),
            "Egypt",
            False,
            True,
        ),
        (
            (
                "Islam, which originated in Saudi Arabia, is the largest and most widely spread "
                "religion in Asia."
            ),
            "Islam",
            False,
            True,
        ),
        (
            "Algeria is bordered to the northeast by Tunisia, to the east by Libya.",
            "Algeria",
            True,
            True,
        ),
        # A place of something else in the sentence.
        (
            (
                "Achilles from Leuce island was venerated as Pontarches the lord and master of the "
                "Pontic Sea, the protector of sailors and navigation."
            ),
            "Leuce island",
            False,
            False,
        ),
        (
            "Alaska has few road connections compared to the rest of the U.S.",
            "Alaska",
            False,
            False,
        ),
        # In Europe, but not what lies around Albania.
        (
            (
                "Albania, Cyprus, and Poland are the only countries in Europe that recorded economic "
                "growth in the first quarter of 2010."
            ),
            "Albania",
            True,
            False,
        ),
    ],
)
def test_where_places_what_the_question_asks_about(window, value, beside, placed):
    assert places(window, [value], frozenset(), beside) is placed


def test_slot_values_read_back_what_filled_each_slot():
    template = "who wrote <fi>a book or other written work</fi> of <fi>a person</fi>?"
    assert slot_values(template, "who wrote alchemical books of Zosimos?") == {
        "a book or other written work": "alchemical books",
        "a person": "Zosimos",
    }
    assert slot_values(template, "where is Zosimos?") is None


def _passage(*sentences):
    # The instantiator's answers are passages of several sentences; the judge reads them whole.
    filler = (
        "The region has a long history of trade with its neighbours, and its economy grew "
        "quickly during the twentieth century as new roads and railways were built."
    )
    return " ".join([*sentences, filler])


@pytest.mark.parametrize(
    ("template", "instruction", "answer", "fault"),
    [
        (
            "what is <fi>a city or country</fi>?",
            "what is Albania?",
            _passage(
                "As part of the reform, major town centers in Albania are being physically "
                "redesigned and façades painted to reflect a more Mediterranean look."
            ),
            "it is about something else",
        ),
        (
            "what is <fi>a city or country</fi>?",
            "what is Alberta?",
            _passage(
                "Alberta is named after Princess Louise Caroline Alberta (1848–1939), the fourth "
                "daughter of Victoria, Queen of Canada."
            ),
            'never says what "Alberta" is',
        ),
        (
            "who founded <fi>an organization</fi>?",
            "who founded the CNT?",
            _passage(
                "The most successful was the Confederación Nacional del Trabajo (National "
                "Confederation of Labour: CNT), founded in 1910."
            ),
            'never says who did what "founded" says',
        ),
        (
            "where is <fi>a kind of island</fi> located?",
            "where is Leuce island located?",
            _passage(
                "Achilles from Leuce island was venerated as Pontarches the lord and master of "
                "the Pontic Sea, the protector of sailors and navigation."
            ),
            "it is about something else",
        ),
        (
            "what did <fi>a nationality, religion or political group</fi> live in?",
            "what did Muslims live in?",
            _passage("Muslims, Sikhs, Buddhists, and Hindus live in Alberta."),
            "the answer gives a place",
        ),
        (
            (
                "what are the two <fi>a specific topic or concept</fi> of <fi>a nationality, "
                "religion or political group</fi>?"
            ),
            "what are the two Indian alchemical authors of Indian?",
            _passage(
                "Two famous early Indian alchemical authors were Nāgārjuna Siddha and "
                "Nityanātha Siddha."
            ),
            'it fills "Indian" twice',
        ),
        (
            "what did <fi>a person</fi> discovered as <fi>a specific topic or concept</fi>?",
            "what did Einstein discovered as Louis de Broglie's work?",
            _passage(
                "Einstein discovered Louis de Broglie's work, and supported his ideas, which "
                "were received skeptically at first."
            ),
            "the query is not grammatical",
        ),
        (
            "what countries are around <fi>a city or country</fi>?",
            "what countries are around Albania?",
            _passage(
                "Albania, Cyprus, and Poland are the only countries in Europe that recorded "
                "economic growth in the first quarter of 2010."
            ),
            'it places nothing around "Albania"',
        ),
        (
            "what is the president of <fi>a city or country</fi>?",
            "what is the president of Azerbaijan?",
            _passage(
                "The President of Azerbaijan appoints the governors of these units, while "
                "the government of Nakhchivan is elected by its parliament."
            ),
            'it never says what "president" is',
        ),
        (
            "what is <fi>a kind of city</fi>?",
            "what is populous city?",
            _passage("The state's most populous city is Anchorage, home to 278,700 people."),
            "where it needs an article",
        ),
        # News, read as documents: the organization is named, what it is known for never said
        # (this pair was kept at score 5 under rules-9).
        (
            "what is <fi>a type of organization</fi> known for?",
            "what is the International Labour Organization known for?",
            _passage(
                'The International Labour Organization considers agriculture "one of the most '
                'hazardous of all economic sectors."'
            ),
            'it never says what "the International Labour Organization" is known for',
        ),
        (
            "what is <fi>a city or country</fi> known for?",
            "what is Benares known for?",
            _passage("Benares is a city in northern India, on the banks of the Ganges."),
            'it never says what "Benares" is known for',
        ),
        (
            "how old is <fi>a person</fi>?",
            "how old is Gherman Titov?",
            _passage(
                "The youngest person to fly in space is Gherman Titov, who was 25 years old when "
                "he flew Vostok 2."
            ),
            "gives an age at another time",
        ),
        # "What are X called?" asks for a name however long the question: a passage that only
        # mentions Angola's neighbours does not give it (kept at score 5 by rules-12).
        (
            "what are members of <fi>an organization</fi> called?",
            "what are members of the Government of Angola called?",
            _passage(
                "The Israeli ambassador to Angola is Avraham Benjamin. In 2005, President José "
                "Eduardo dos Santos visited Israel."
            ),
            'it never says what "members" is called',
        ),
        # "Where does X start?" asks where its source lies, not where X is (kept at score 5 by
        # rules-13 on the `--full` sample).
        (
            "where does <fi>a place</fi> start?",
            "where does the Yangtze River start?",
            _passage(
                "The Yangtze River in China is the longest river in the continent. The Himalayas "
                "between Nepal and China is the tallest mountain range in the world."
            ),
            'it never says where "the Yangtze River" starts or ends',
        ),
        # A question about the present, answered by who held the role before (kept at score 5
        # by rules-14 on a ShareGPT answer about Taipei).
        (
            "who is the leader of <fi>a city or country</fi> right now?",
            "who is the leader of the Republic of China right now?",
            _passage(
                "The memorial hall was built to honor Chiang Kai-shek, the former leader of the "
                "Republic of China. The hall is an impressive structure that stands 76 meters "
                "tall, and it houses a museum that is dedicated to the life and legacy of Chiang."
            ),
            'where the query says "now", the answer says "former"',
        ),
        # "Do you know X?" asks who X is; a novel's passage about what Dagny thinks assumes it.
        (
            "do you know <fi>a person</fi>?",
            "do you know Dagny?",
            _passage(
                "Dagny considers him the least bad of the government representatives, since he "
                "does have some real knowledge on the running of trains."
            ),
            'it never says who or what "Dagny" is',
        ),
    ],
)
def test_the_judge_refuses_pipeline_pairs_that_name_the_things_without_answering(
    template, instruction, answer, fault
):
    judgement = rules_judge(instruction, answer, answer, template)
    assert judgement.score < MIN_JUDGE_SCORE, judgement
    assert fault in judgement.feedback


@pytest.mark.parametrize(
    ("template", "instruction", "answer"),
    [
        (
            "what are members of <fi>an organization</fi> called?",
            "what are members of the Government of Angola called?",
            _passage(
                "Members of the Government of Angola are called ministers, and the President "
                "appoints them."
            ),
        ),
        (
            "where does <fi>a place</fi> start?",
            "where does the Yangtze River start?",
            _passage(
                "The Yangtze River rises in the Tanggula Mountains on the Tibetan Plateau and "
                "flows east for 6,300 kilometres into the East China Sea at Shanghai."
            ),
        ),
        # "What is X?" covers every sentence alike (a name counts wherever it is said): the focus
        # is the sentence that names X, not the one before it (refused by rules-15 on a ShareGPT
        # answer).
        (
            "what is <fi>an organization</fi>?",
            "what is the DAO?",
            (
                "Sure, here's an example of a real-life smart contract on the Ethereum "
                "blockchain:\n\nThe Decentralized Autonomous Organization (DAO) was a smart "
                "contract that was created in 2016 to act as a venture capital fund for the "
                "crypto and decentralized space. It raised over $150 million worth of Ether."
            ),
        ),
        (
            "who is the leader of <fi>a city or country</fi> right now?",
            "who is the leader of Taiwan right now?",
            _passage(
                "Lai Ching-te is the current leader of Taiwan: he took office as President in "
                "May 2024, succeeding Tsai Ing-wen, the former leader of the island."
            ),
        ),
        (
            "where is the country of <fi>a city or country</fi> located?",
            "where is the country of Egypt located?",
            _passage(
                "This makes Egypt a transcontinental country, with the Sinai peninsula in Asia "
                "and the remainder of the country in Africa."
            ),
        ),
        (
            "who wrote <fi>a book or other written work</fi>?",
            "who wrote the Muqaddimah?",
            _passage(
                "The Middle Ages have known many Arabic writers, with authors like Ibn Manzur and "
                "Ibn Khaldoun, who wrote the Muqaddimah while staying in Algeria."
            ),
        ),
        (
            "what countries are around <fi>a city or country</fi>?",
            "what countries are around Algeria?",
            _passage(
                "Algeria is the largest country in Africa. Algeria is bordered to the northeast "
                "by Tunisia, to the east by Libya, to the west by Morocco."
            ),
        ),
        (
            "what is <fi>a city or country</fi> known for?",
            "what is Benares known for?",
            _passage(
                "Benares is known for its ghats on the Ganges river, where devout Hindus come to "
                "bathe and to cremate their dead."
            ),
        ),
        (
            "what is <fi>a city or country</fi> famous for?",
            "what is Benares famous for?",
            _passage("Benares is famous for its silk, woven in the city for centuries."),
        ),
        (
            "how old is <fi>a person</fi>?",
            "how old is Gherman Titov?",
            _passage(
                "Gherman Titov (born 11 September 1935) was 25 years old when he flew Vostok 2."
            ),
        ),
        (
            "do you know <fi>a person</fi>?",
            "do you know Dagny?",
            _passage(
                "Dagny Taggart is the heroine of Atlas Shrugged, who runs the railroad her "
                "family founded."
            ),
        ),
        # A list's entry says what its term is.
        (
            "what is <fi>a named entity such as a person, place or product</fi>?",
            "what is User Management Microservice?",
            (
                "Here is a possible split of the application into microservices:\n\n1. User "
                "Management Microservice: This microservice will handle user authentication, "
                "authorization, and profile management. It will store user data in its own "
                "database and expose a REST API for the other services.\n2. Order Microservice: "
                "This microservice will manage orders, from creation to delivery, and will "
                "publish events when an order changes state."
            ),
        ),
        # News: the question names him by title and surname, the passage by his whole name.
        (
            "Do you know about <fi>a person</fi>?",
            "Do you know about Dr Hollingworth?",
            _passage(
                "Dr Peter Hollingworth was the Anglican Archbishop of Brisbane when a teacher at "
                "a Toowoomba Anglican school allegedly abused students there."
            ),
        ),
    ],
)
def test_the_judge_keeps_pipeline_pairs_whose_passage_answers(template, instruction, answer):
    judgement = rules_judge(instruction, answer, answer, template)
    assert judgement.score >= MIN_JUDGE_SCORE, judgement


@pytest.mark.parametrize(
    ("question", "thing"),
    [
        ("what is the Cancer Council known for?", "the Cancer Council"),
        ("what is Michael Jackson best known for?", "Michael Jackson"),
        ("what was Benares famous for?", "Benares"),
        # It asks what Benares is called, or names what it asks for: not "known for" questions.
        ("what is Benares known as?", None),
        ("What tradition were the Saint-Evroul monks known for?", None),
    ],
)
def test_what_a_known_for_question_asks_about(question, thing):
    assert asked_known_for(parse(question)) == thing
