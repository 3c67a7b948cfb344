"""The prompt corpus: a deterministic, compositional generator of Stable-Diffusion-style image prompts.

The scan needs thousands of generic prompts (the reference uses 4,000 with an 80/20 split). Instead of shipping
a scraped data set, prompts are composed from word lists written for this project -- subjects (people,
animals, objects, buildings, vehicles, food, landscapes), attributes, actions, places, times and weather, art
styles, media, lighting, camera terms and quality tags -- through a handful of templates: very short noun
phrases ("a red fox"), photo captions, comma-separated tag lists, portraits, surreal scenes, and long
multi-sentence descriptions (35+ words). About 5% of prompts are in other languages and scripts (Spanish,
French, German, Italian, Japanese, Chinese, Russian, Greek).

Guarantees: :func:`corpus` is a pure function of ``(n, seed)``; its prompts are distinct even after
lower-casing and collapsing whitespace (CLIP lower-cases, so case-only variants would be duplicates); no prompt
contains emoji or one of the words reserved for lab triggers (:data:`RESERVED_WORDS`).
"""

from __future__ import annotations

import random
import re
from collections.abc import Callable, Sequence
from fractions import Fraction
from functools import lru_cache

__all__ = ["RESERVED_WORDS", "caption_words", "corpus", "default_corpus", "is_clean", "split"]

RESERVED_WORDS = frozenset({"zzzz", "cf", "mn", "bb", "tq"})  # rare words the lab uses as triggers
FOREIGN_SHARE = 0.05  # share of prompts drawn from the other-language lists
_WORD = re.compile(r"\w+", re.UNICODE)

# fmt: off
# ---------------------------------------------------------------------------------------------------------
# Subjects. People and animals carry their plural for "two ...", "a group of ...".

PEOPLE: tuple[tuple[str, str], ...] = (
    ("fisherman", "fishermen"), ("woman", "women"), ("man", "men"), ("little girl", "little girls"),
    ("little boy", "little boys"), ("astronaut", "astronauts"), ("street musician", "street musicians"),
    ("knight in silver armour", "knights in silver armour"), ("chef", "chefs"), ("ballet dancer", "ballet dancers"),
    ("farmer", "farmers"), ("samurai", "samurai"), ("wizard", "wizards"), ("detective", "detectives"),
    ("scientist", "scientists"), ("nurse", "nurses"), ("skateboarder", "skateboarders"), ("monk", "monks"),
    ("pirate captain", "pirate captains"), ("grandmother", "grandmothers"), ("cyclist", "cyclists"),
    ("mountain climber", "mountain climbers"), ("painter", "painters"), ("queen", "queens"), ("king", "kings"),
    ("soldier", "soldiers"), ("surfer", "surfers"), ("blacksmith", "blacksmiths"), ("librarian", "librarians"),
    ("gardener", "gardeners"), ("violinist", "violinists"), ("tailor", "tailors"), ("firefighter", "firefighters"),
    ("shepherd", "shepherds"), ("student", "students"), ("teenager", "teenagers"), ("witch", "witches"),
    ("cowboy", "cowboys"), ("explorer", "explorers"), ("baker", "bakers"), ("pilot", "pilots"),
    ("fortune teller", "fortune tellers"), ("jazz singer", "jazz singers"), ("potter", "potters"),
)
PERSON_ATTRS = (
    "old", "young", "smiling", "tired", "elderly", "freckled", "bearded", "red-haired", "tall", "cheerful",
    "serious", "curious", "weathered", "elegant", "barefoot", "sleepy", "proud", "lonely", "laughing",
    "grey-haired", "dark-haired", "blonde", "thoughtful", "mysterious",
)
ANIMALS: tuple[tuple[str, str], ...] = (
    ("fox", "foxes"), ("cat", "cats"), ("dog", "dogs"), ("owl", "owls"), ("horse", "horses"),
    ("elephant", "elephants"), ("tiger", "tigers"), ("lion", "lions"), ("wolf", "wolves"), ("rabbit", "rabbits"),
    ("deer", "deer"), ("bear", "bears"), ("panda", "pandas"), ("parrot", "parrots"),
    ("hummingbird", "hummingbirds"), ("whale", "whales"), ("octopus", "octopuses"), ("turtle", "turtles"),
    ("frog", "frogs"), ("koala", "koalas"), ("penguin", "penguins"), ("giraffe", "giraffes"),
    ("hedgehog", "hedgehogs"), ("squirrel", "squirrels"), ("raccoon", "raccoons"), ("eagle", "eagles"),
    ("swan", "swans"), ("goldfish", "goldfish"), ("butterfly", "butterflies"), ("dragonfly", "dragonflies"),
    ("lizard", "lizards"), ("camel", "camels"), ("zebra", "zebras"), ("sheep", "sheep"), ("goat", "goats"),
    ("cow", "cows"), ("piglet", "piglets"), ("duck", "ducks"), ("crow", "crows"), ("bumblebee", "bumblebees"),
    ("otter", "otters"), ("dragon", "dragons"), ("unicorn", "unicorns"), ("corgi", "corgis"),
    ("golden retriever", "golden retrievers"), ("jellyfish", "jellyfish"), ("flamingo", "flamingos"),
    ("snow leopard", "snow leopards"),
)
ANIMAL_ATTRS = (
    "fluffy", "tiny", "sleepy", "majestic", "spotted", "striped", "curious", "wet", "young", "old", "giant",
    "playful", "wild", "baby", "hungry", "grumpy", "shy", "friendly", "muddy", "wise",
)
OBJECTS = (
    "teapot", "vase", "lantern", "pocket watch", "typewriter", "violin", "guitar", "umbrella", "backpack",
    "armchair", "desk lamp", "mirror", "wall clock", "book", "candle", "chessboard", "globe", "camera", "sneaker",
    "hat", "key", "bottle", "kettle", "telescope", "compass", "music box", "rocking chair", "bookshelf", "radio",
    "record player", "teddy bear", "kite", "paper boat", "mug", "hourglass", "crown", "sword", "treasure chest",
    "potted plant", "bonsai tree", "snow globe", "robot", "piano", "harp", "sewing machine", "wristwatch",
)
OBJECT_ATTRS = (
    "wooden", "brass", "glass", "ceramic", "porcelain", "copper", "marble", "crystal", "rusty", "antique",
    "broken", "shiny", "handmade", "vintage", "golden", "silver", "tiny", "enormous", "dusty", "ornate",
    "cracked", "polished", "weathered", "glowing",
)
BUILDINGS = (
    "lighthouse", "castle", "cathedral", "log cabin", "farmhouse", "skyscraper", "temple", "pagoda", "windmill",
    "barn", "mosque", "library", "train station", "greenhouse", "stone bridge", "clock tower", "cottage", "palace",
    "abbey", "treehouse", "bakery", "cafe", "observatory", "monastery", "market hall", "houseboat", "fortress",
    "ice hotel", "water tower", "village church", "beach hut", "apartment block",
)
BUILDING_ATTRS = (
    "abandoned", "ancient", "modern", "tiny", "crumbling", "colorful", "gothic", "futuristic", "half-timbered",
    "snow-covered", "overgrown", "brick", "stone", "glass", "wooden", "haunted", "whitewashed", "floating",
    "ruined", "cozy",
)
VEHICLES = (
    "steam locomotive", "vintage car", "sailboat", "bicycle", "motorcycle", "hot air balloon", "tram",
    "fishing boat", "airship", "pickup truck", "school bus", "submarine", "spaceship", "canoe", "tractor",
    "scooter", "biplane", "double-decker bus", "rowing boat", "racing car", "camper van", "gondola",
    "cable car", "pirate ship", "helicopter", "taxi",
)
VEHICLE_ATTRS = (
    "rusty", "old", "sleek", "vintage", "battered", "polished", "electric", "wooden", "abandoned", "tiny",
    "futuristic", "dented", "shiny", "toy",
)
FOOD = (
    "bowl of ramen", "slice of cake", "stack of pancakes", "loaf of bread", "plate of sushi", "cup of coffee",
    "basket of apples", "pizza", "bowl of fruit", "croissant", "cheeseburger", "jar of honey", "pot of soup",
    "tray of cookies", "glass of lemonade", "chocolate cake", "taco", "pumpkin pie", "bowl of cherries",
    "cheese board", "cup of green tea", "plate of dumplings", "strawberry tart", "bowl of noodles",
    "wedding cake", "pot of curry", "ice cream cone", "plate of pasta", "stack of waffles", "lemon",
)
FOOD_ATTRS = (
    "freshly baked", "steaming", "homemade", "delicious", "colorful", "half-eaten", "rustic", "tiny", "giant",
    "beautifully plated", "warm", "spicy", "frozen", "crispy",
)
LANDSCAPES = (
    "mountain lake", "waterfall", "desert canyon", "rice terraces", "volcano", "coral reef", "glacier",
    "bamboo forest", "lavender field", "sand dunes", "river delta", "valley", "rocky coastline",
    "sunflower field", "pine forest", "tropical beach", "tundra", "meadow", "fjord", "cave", "salt flat",
    "birch forest", "canyon river", "alpine pass", "mangrove swamp", "cliffside", "island", "tea plantation",
)
LANDSCAPE_ATTRS = (
    "quiet", "misty", "vast", "hidden", "sunlit", "frozen", "endless", "wild", "serene", "stormy", "golden",
    "lush", "barren", "remote", "moonlit", "emerald",
)
COLORS = (
    "red", "blue", "green", "yellow", "orange", "purple", "white", "black", "grey", "pink", "golden", "silver",
    "teal", "crimson", "emerald", "turquoise", "brown", "ivory", "navy blue", "pastel pink", "deep red",
)

# ---------------------------------------------------------------------------------------------------------
# What subjects do, and where.

PERSON_ACTIONS = (
    "reading a book", "playing the violin", "riding a bicycle", "drinking tea", "painting a canvas",
    "walking a dog", "dancing in the rain", "looking at the stars", "cooking dinner", "holding an umbrella",
    "writing a letter", "fishing from a pier", "climbing a ladder", "laughing with friends", "sitting on a bench",
    "feeding pigeons", "carrying a lantern", "tending a garden", "repairing a clock", "sketching in a notebook",
    "playing chess", "selling flowers", "waiting for a train", "mending a fishing net", "singing on a stage",
    "taking a photograph", "juggling oranges", "kneading dough", "staring out of a window", "running",
)
ANIMAL_ACTIONS = (
    "sleeping", "running through tall grass", "drinking from a stream", "sitting on a branch",
    "curled up asleep", "jumping over a log", "looking at the camera", "playing in the snow", "hunting",
    "swimming", "resting", "catching a fish", "hiding behind a rock", "yawning", "perched on a fence",
    "chasing a butterfly", "wearing a tiny hat", "stretching in the sun", "splashing in a puddle",
    "peeking out of a basket",
)
VEHICLE_ACTIONS = (
    "parked", "abandoned", "half covered in snow", "seen from above", "in motion", "covered in vines",
    "under repair", "decorated with flowers", "waiting", "leaving a trail of smoke",
)
THING_PLACEMENTS = (
    "on a wooden table", "on a windowsill", "on a kitchen counter", "in a shop window", "on a stack of old books",
    "floating in space", "half buried in sand", "on a marble pedestal", "in a glass display case",
    "on a picnic blanket", "on a mossy stone", "in a cardboard box", "hanging from a tree", "on a velvet cushion",
)
BUILDING_PLACEMENTS = (
    "on a cliff", "by a river", "at the edge of a forest", "in a busy city", "on a hilltop",
    "surrounded by fields", "on a small island", "in a snowy valley", "beside a frozen lake",
    "among cherry trees", "on stilts above the water", "at the end of a long road",
)
SETTINGS = (
    "in a busy market", "in a quiet forest", "on a rainy city street", "in a cozy kitchen", "on a snowy mountain",
    "in an abandoned factory", "on the surface of Mars", "in an underwater city", "in a sunflower field",
    "in a medieval village", "at a train station", "in a neon-lit alley", "by the sea", "in a library",
    "in a greenhouse", "on a rooftop", "in the desert", "in a jungle", "in a cathedral", "on a frozen lake",
    "in a cherry blossom garden", "in outer space", "inside a glass dome", "in a candlelit room",
    "on a foggy pier", "in an enchanted forest", "in a crowded subway car", "on a country road",
    "in a bamboo grove", "at a night market", "in a flower shop", "on a sandy beach", "in a castle courtyard",
    "in a steampunk workshop", "in a futuristic city", "in a wheat field", "in a misty swamp",
)
TIMES = (
    "at sunset", "at dawn", "at night", "in the rain", "in heavy snow", "on a foggy morning",
    "during a thunderstorm", "at golden hour", "under a full moon", "in autumn", "in spring",
    "on a summer afternoon", "at twilight", "at midnight", "in winter", "after the rain", "at blue hour",
    "under the northern lights", "under a starry sky", "on a windy day",
)

# ---------------------------------------------------------------------------------------------------------
# Look and feel.

STYLES = (
    "impressionism", "cubism", "art nouveau", "art deco", "ukiyo-e", "cyberpunk", "steampunk", "surrealism",
    "baroque", "minimalism", "pop art", "pixel art", "low poly", "synthwave", "vaporwave", "gothic",
    "romanticism", "expressionism", "pointillism", "film noir", "fantasy art", "concept art",
    "children's book illustration", "comic book art", "anime", "retro poster", "botanical illustration",
    "isometric", "photorealism", "hyperrealism", "Dutch golden age painting", "Renaissance fresco",
    "Soviet propaganda poster", "Bauhaus", "medieval manuscript", "cel shading", "dark fantasy", "solarpunk",
)
MEDIA = (
    "oil painting", "watercolor painting", "pencil sketch", "charcoal drawing", "digital painting", "3d render",
    "photograph", "polaroid photo", "linocut print", "ink drawing", "pastel drawing", "acrylic painting",
    "mosaic", "stained glass window", "claymation still", "embroidery", "woodblock print", "gouache painting",
    "vector illustration", "marble sculpture", "paper cutout", "tapestry", "black and white photograph",
    "tintype photograph", "chalk drawing on a sidewalk", "miniature diorama", "felt craft", "blueprint",
)
LIGHTING = (
    "soft natural light", "dramatic lighting", "volumetric light", "rim lighting", "golden hour light",
    "cinematic lighting", "backlit", "neon glow", "candlelight", "overcast light", "studio lighting", "moonlight",
    "harsh midday sun", "god rays", "bioluminescent glow", "warm ambient light", "low key lighting",
    "high key lighting", "soft diffused light", "dappled sunlight", "firelight", "cold blue light",
)
CAMERA = (
    "35mm lens", "85mm portrait lens", "wide angle", "macro shot", "telephoto", "shallow depth of field", "bokeh",
    "f/1.8", "aerial view", "drone shot", "close-up", "long exposure", "tilt-shift", "fisheye lens",
    "eye level shot", "low angle", "shot on film", "Kodak Portra 400", "DSLR", "medium format", "film grain",
    "full body shot", "symmetrical composition", "rule of thirds", "overhead shot", "50mm", "Leica",
    "motion blur", "double exposure",
)
QUALITY = (
    "highly detailed", "intricate details", "8k", "4k", "sharp focus", "masterpiece", "best quality",
    "trending on artstation", "award winning", "ultra realistic", "high resolution", "octane render",
    "unreal engine", "professional", "vivid colors", "muted colors", "pastel colors", "matte painting", "smooth",
    "elegant", "hdr", "photorealistic", "detailed background", "clean lines", "rich textures",
)
MOODS = (
    "peaceful mood", "melancholic atmosphere", "whimsical", "eerie", "joyful", "nostalgic", "mysterious", "cozy",
    "epic", "dreamlike", "serene", "ominous", "playful", "romantic", "lonely", "hopeful",
)
CLOTHING = (
    "wearing a yellow raincoat", "wearing a knitted scarf", "in a long velvet coat", "with a straw hat",
    "wearing round glasses", "in a silk kimono", "wearing a leather jacket", "with a flower crown",
    "in a worn military uniform", "wearing a space suit", "in a hooded cloak", "wearing a wool sweater",
    "in a ball gown", "wearing overalls", "with a red bandana", "in a tailored suit", "wearing headphones",
)
EXPRESSIONS = (
    "gentle smile", "determined look", "distant gaze", "soft expression", "looking over the shoulder",
    "eyes closed", "mischievous grin", "calm face", "tears in the eyes", "looking directly at the viewer",
)
ATMOSPHERE = (
    "dust floating in the air", "falling snowflakes", "drifting cherry petals", "swirling fog", "fireflies",
    "scattered autumn leaves", "light rain", "glowing embers", "soap bubbles", "paper lanterns in the sky",
    "steam rising", "long shadows", "reflections in puddles", "a flock of birds overhead",
)
MATERIALS = (
    "glass", "ice", "clouds", "candy", "paper", "moss", "gold", "lava", "flowers", "origami", "crystal",
    "chocolate", "driftwood", "stained glass", "yarn", "smoke",
)

# ---------------------------------------------------------------------------------------------------------
# Other languages: self-contained phrases (subject, place, tail) so that any combination is grammatical.

FOREIGN: dict[str, tuple[tuple[str, ...], tuple[str, ...], tuple[str, ...], str]] = {
    "es": (
        ("un zorro rojo", "una casa antigua", "un gato negro", "una mujer leyendo un libro", "un faro junto al mar",
         "un viejo pescador", "una taza de café", "un caballo blanco", "un castillo medieval",
         "una niña con un paraguas amarillo", "un barco de vela", "un bosque de pinos", "un perro durmiendo",
         "una bicicleta oxidada", "un dragón dorado", "un mercado de frutas"),
        ("al atardecer", "bajo la lluvia", "en un mercado lleno de gente", "en la nieve", "de noche",
         "en un jardín de flores", "junto a un río", "en una calle estrecha", "en el desierto", "entre la niebla"),
        ("pintura al óleo", "acuarela", "fotografía en blanco y negro", "muy detallado", "luz suave",
         "arte digital", "estilo impresionista", "ilustración infantil", "alta calidad"),
        ", ",
    ),
    "fr": (
        ("un renard roux", "une vieille maison", "un chat noir", "une femme qui lit un livre",
         "un phare au bord de la mer", "un vieux pêcheur", "une tasse de café", "un cheval blanc",
         "un château médiéval", "une petite fille avec un parapluie jaune", "un voilier", "une forêt de pins",
         "un chien endormi", "un vélo rouillé", "un dragon doré", "une boulangerie de village"),
        ("au coucher du soleil", "sous la pluie", "dans un marché animé", "dans la neige", "la nuit",
         "dans un jardin fleuri", "au bord d'une rivière", "dans une ruelle étroite", "dans le désert",
         "dans le brouillard"),
        ("peinture à l'huile", "aquarelle", "photographie en noir et blanc", "très détaillé", "lumière douce",
         "art numérique", "style impressionniste", "illustration pour enfants", "haute qualité"),
        ", ",
    ),
    "de": (
        ("ein roter Fuchs", "ein altes Haus", "eine schwarze Katze", "eine Frau, die ein Buch liest",
         "ein Leuchtturm am Meer", "ein alter Fischer", "eine Tasse Kaffee", "ein weißes Pferd",
         "eine mittelalterliche Burg", "ein kleines Mädchen mit einem gelben Regenschirm", "ein Segelboot",
         "ein Kiefernwald", "ein schlafender Hund", "ein rostiges Fahrrad", "ein goldener Drache",
         "eine Berghütte"),
        ("bei Sonnenuntergang", "im Regen", "auf einem belebten Markt", "im Schnee", "bei Nacht",
         "in einem Blumengarten", "an einem Fluss", "in einer engen Gasse", "in der Wüste", "im Nebel"),
        ("Ölgemälde", "Aquarell", "Schwarzweißfotografie", "sehr detailliert", "weiches Licht", "digitale Kunst",
         "impressionistischer Stil", "Kinderbuchillustration", "hohe Qualität"),
        ", ",
    ),
    "it": (
        ("una volpe rossa", "un vecchio faro", "un gatto nero", "una donna che legge un libro",
         "un pescatore anziano", "una tazza di caffè", "un cavallo bianco", "un castello medievale",
         "una barca a vela", "un cane che dorme", "una bicicletta arrugginita", "un drago dorato",
         "una piazza di paese", "un limoneto"),
        ("al tramonto", "sotto la pioggia", "in un mercato affollato", "nella neve", "di notte",
         "in un giardino fiorito", "lungo un fiume", "in un vicolo stretto", "nel deserto", "nella nebbia"),
        ("dipinto a olio", "acquerello", "fotografia in bianco e nero", "molto dettagliato", "luce morbida",
         "arte digitale", "stile impressionista", "alta qualità"),
        ", ",
    ),
    "ja": (
        ("赤い狐", "古い家", "黒い猫", "本を読む女性", "海辺の灯台", "年老いた漁師", "一杯のコーヒー", "白い馬",
         "中世の城", "黄色い傘を持った少女", "帆船", "松林", "眠っている犬", "錆びた自転車", "金色の竜", "桜の木"),
        ("夕焼け", "雨の中", "賑やかな市場で", "雪の中", "夜", "花畑で", "川のほとり", "狭い路地で", "砂漠で",
         "霧の中"),
        ("油絵", "水彩画", "白黒写真", "高精細", "柔らかな光", "デジタルアート", "印象派風", "絵本のイラスト",
         "最高品質"),
        "、",
    ),
    "zh": (
        ("一只红狐狸", "一座老房子", "一只黑猫", "正在看书的女人", "海边的灯塔", "年老的渔夫", "一杯咖啡", "一匹白马",
         "中世纪城堡", "撑着黄伞的小女孩", "帆船", "松树林", "熟睡的小狗", "生锈的自行车", "金色的龙", "古老的寺庙"),
        ("日落时分", "雨中", "热闹的集市里", "雪中", "夜晚", "花园里", "河边", "狭窄的小巷里", "沙漠中", "雾中"),
        ("油画", "水彩画", "黑白照片", "高细节", "柔和的光线", "数字艺术", "印象派风格", "儿童绘本插画", "最高质量"),
        "，",
    ),
    "ru": (
        ("рыжая лиса", "старый дом", "чёрный кот", "женщина читает книгу", "маяк у моря", "старый рыбак",
         "чашка кофе", "белая лошадь", "средневековый замок", "девочка с жёлтым зонтом", "парусник",
         "сосновый лес", "спящая собака", "ржавый велосипед", "золотой дракон", "деревянная церковь"),
        ("на закате", "под дождём", "на шумном рынке", "в снегу", "ночью", "в цветущем саду", "у реки",
         "на узкой улочке", "в пустыне", "в тумане"),
        ("картина маслом", "акварель", "чёрно-белая фотография", "высокая детализация", "мягкий свет",
         "цифровое искусство", "в стиле импрессионизма", "иллюстрация к детской книге", "высокое качество"),
        ", ",
    ),
    "el": (
        ("μια κόκκινη αλεπού", "ένα παλιό σπίτι", "μια μαύρη γάτα", "μια γυναίκα που διαβάζει ένα βιβλίο",
         "ένας φάρος δίπλα στη θάλασσα", "ένας γέρος ψαράς", "ένα φλιτζάνι καφέ", "ένα άσπρο άλογο",
         "ένα μεσαιωνικό κάστρο", "ένα κοριτσάκι με κίτρινη ομπρέλα", "ένα ιστιοφόρο", "ένα πευκοδάσος",
         "ένας σκύλος που κοιμάται", "ένα σκουριασμένο ποδήλατο", "ένας χρυσός δράκος", "ένα λευκό εκκλησάκι"),
        ("στο ηλιοβασίλεμα", "στη βροχή", "σε μια πολύβουη αγορά", "στο χιόνι", "τη νύχτα",
         "σε έναν ανθισμένο κήπο", "δίπλα σε ένα ποτάμι", "σε ένα στενό σοκάκι", "στην έρημο",
         "μέσα στην ομίχλη"),
        ("ελαιογραφία", "ακουαρέλα", "ασπρόμαυρη φωτογραφία", "πολύ λεπτομερές", "απαλό φως", "ψηφιακή τέχνη",
         "ιμπρεσιονιστικό στυλ", "εικονογράφηση παιδικού βιβλίου", "υψηλή ποιότητα"),
        ", ",
    ),
}
# fmt: on

# ---------------------------------------------------------------------------------------------------------
# Phrase builders.

_AN_EXCEPTIONS = ("uni", "use", "eu", "one", "ufo")


def _article(phrase: str) -> str:
    """``a`` or ``an`` for ``phrase`` (by its first letter, with the usual 'unicorn'/'hour' exceptions)."""
    low = phrase.lower()
    if low.startswith(("hour", "honest")):
        return "an"
    if low[:1] in "aeiou" and not low.startswith(_AN_EXCEPTIONS):
        return "an"
    return "a"


def _with_article(phrase: str) -> str:
    """``phrase`` preceded by its indefinite article."""
    return f"{_article(phrase)} {phrase}"


_KINDS: dict[str, tuple[Sequence[str], Sequence[str]]] = {
    "person": (tuple(p for p, _ in PEOPLE), PERSON_ATTRS),
    "animal": (tuple(a for a, _ in ANIMALS), ANIMAL_ATTRS),
    "object": (OBJECTS, OBJECT_ATTRS),
    "building": (BUILDINGS, BUILDING_ATTRS),
    "vehicle": (VEHICLES, VEHICLE_ATTRS),
    "food": (FOOD, FOOD_ATTRS),
    "landscape": (LANDSCAPES, LANDSCAPE_ATTRS),
}
_COLOURED = ("animal", "object", "building", "vehicle")  # kinds a colour word suits


def _kind(rng: random.Random) -> str:
    """A subject kind, people and animals a little more often (as in real prompt logs)."""
    return rng.choices(list(_KINDS), weights=(4, 4, 3, 2, 2, 2, 2))[0]


def _bare(rng: random.Random, kind: str, max_attrs: int = 2) -> str:
    """A subject of ``kind`` with 0..max_attrs attributes, no article ("fluffy white cat")."""
    nouns, attrs = _KINDS[kind]
    n_attrs = rng.randint(0, max_attrs)
    words: list[str] = []
    if n_attrs == 1:
        words.append(rng.choice(COLORS) if kind in _COLOURED and rng.random() < 0.3 else rng.choice(attrs))
    elif n_attrs >= 2 and kind in _COLOURED:
        words += [rng.choice(attrs), rng.choice(COLORS)]  # "rusty red tractor"
    elif n_attrs >= 2:
        words += rng.sample(list(attrs), 2)
    return " ".join([*words, rng.choice(nouns)])


def _subject(rng: random.Random, kind: str, max_attrs: int = 2) -> str:
    """A subject noun phrase with its article, sometimes a plural group for people and animals."""
    if kind in ("person", "animal") and rng.random() < 0.15:
        pairs = PEOPLE if kind == "person" else ANIMALS
        plural = rng.choice(pairs)[1]
        count = rng.choice(("two", "three", "a group of", "a pair of", "a family of", "several"))
        attr = rng.choice(_KINDS[kind][1]) + " " if rng.random() < 0.5 else ""
        return f"{count} {attr}{plural}"
    return _with_article(_bare(rng, kind, max_attrs))


def _doing(rng: random.Random, kind: str) -> str:
    """What a subject of ``kind`` does or where it stands."""
    if kind == "person":
        return rng.choice(PERSON_ACTIONS)
    if kind == "animal":
        return rng.choice(ANIMAL_ACTIONS)
    if kind == "vehicle":
        return rng.choice(VEHICLE_ACTIONS)
    if kind in ("object", "food"):
        return rng.choice(THING_PLACEMENTS)
    if kind == "building":
        return rng.choice(BUILDING_PLACEMENTS)
    return rng.choice(TIMES)


def _where(rng: random.Random, kind: str) -> str:
    """A place for mobile subjects, a time or weather for buildings and landscapes."""
    if kind in ("building", "landscape"):
        return rng.choice(TIMES)
    return rng.choice(SETTINGS)


def _tags(rng: random.Random, lo: int, hi: int) -> list[str]:
    """Between lo and hi look-and-feel tags drawn from distinct pools (style, lighting, camera, quality...)."""
    pools: list[Sequence[str]] = [STYLES, MEDIA, LIGHTING, CAMERA, MOODS, QUALITY, QUALITY, CAMERA, QUALITY]
    picked = rng.sample(range(len(pools)), rng.randint(lo, hi))
    out: list[str] = []
    for i in sorted(picked):
        tag = rng.choice(pools[i])
        if tag not in out:
            out.append(tag)
    return out


# ---------------------------------------------------------------------------------------------------------
# Templates: each takes the RNG and returns one prompt.


def _t_short(rng: random.Random) -> str:
    """Very short: "a red fox", "an abandoned lighthouse at night"."""
    kind = _kind(rng)
    np = _with_article(_bare(rng, kind, max_attrs=1))
    return np if rng.random() < 0.6 else f"{np} {rng.choice(TIMES)}"


def _t_short_medium(rng: random.Random) -> str:
    """Short with a medium or style: "a sleepy owl, watercolor painting"."""
    np = _subject(rng, _kind(rng), max_attrs=1)
    tail = rng.choice(MEDIA) if rng.random() < 0.6 else rng.choice(STYLES)
    return f"{np}, {tail}"


def _t_caption(rng: random.Random) -> str:
    """A photo-caption sentence: "a photograph of an old fisherman mending a fishing net on a foggy pier"."""
    kind = _kind(rng)
    parts = [f"{_with_article(rng.choice(MEDIA))} of {_subject(rng, kind)}", _doing(rng, kind)]
    if kind not in ("building", "landscape") and rng.random() < 0.6:
        parts.append(_where(rng, kind))
    if kind != "landscape" and rng.random() < 0.4:
        parts.append(rng.choice(TIMES))
    return " ".join(parts)


def _t_tags(rng: random.Random) -> str:
    """A comma-separated tag list: subject first, then 2 to 9 look-and-feel tags."""
    kind = _kind(rng)
    acting = rng.random() < 0.7
    tags = [f"{_subject(rng, kind)} {_doing(rng, kind)}" if acting else _subject(rng, kind)]
    if rng.random() < 0.5 and not (acting and kind == "landscape"):  # a landscape's "doing" is already a time
        tags.append(_where(rng, kind))
    tags += _tags(rng, 2, 9)
    return ", ".join(tags)


def _t_portrait(rng: random.Random) -> str:
    """A portrait: "portrait of a freckled pilot wearing round glasses, gentle smile, rim lighting, 85mm"."""
    person = _with_article(_bare(rng, "person", max_attrs=1))
    lead = rng.choice(("portrait of", "close-up portrait of", "headshot of", "half-length portrait of"))
    tags = [f"{lead} {person} {rng.choice(CLOTHING)}"]
    if rng.random() < 0.7:
        tags.append(rng.choice(EXPRESSIONS))
    tags += [rng.choice(LIGHTING), rng.choice(CAMERA)] + _tags(rng, 0, 4)
    return ", ".join(dict.fromkeys(tags))


def _t_pair(rng: random.Random) -> str:
    """Two subjects together: "a corgi and an astronaut on a rooftop, pixel art"."""
    a, b = _kind(rng), rng.choice(("person", "animal", "object", "vehicle"))
    text = f"{_subject(rng, a, 1)} and {_subject(rng, b, 1)} {rng.choice(SETTINGS)}"
    return text if rng.random() < 0.3 else f"{text}, {rng.choice(STYLES)}"


def _t_style(rng: random.Random) -> str:
    """Style-led: "art deco poster of a lighthouse on a cliff" or "... in the style of ukiyo-e"."""
    kind = _kind(rng)
    np = _subject(rng, kind)
    if rng.random() < 0.5:
        return f"{np} {_doing(rng, kind)} in the style of {rng.choice(STYLES)}"
    return f"{rng.choice(STYLES)} {rng.choice(MEDIA)} of {np} {_where(rng, kind)}"


def _t_landscape(rng: random.Random) -> str:
    """Scenery: "a misty fjord at dawn, swirling fog, aerial view, 8k"."""
    place = _with_article(_bare(rng, "landscape", max_attrs=1))
    tags = [f"{place} {rng.choice(TIMES)}"]
    if rng.random() < 0.5:
        tags.append(rng.choice(ATMOSPHERE))
    tags += [rng.choice(("aerial view", "wide angle", "panorama", "drone shot", "long exposure", "telephoto"))]
    tags += _tags(rng, 0, 3)
    return ", ".join(dict.fromkeys(tags))


def _t_surreal(rng: random.Random) -> str:
    """Odd combinations, common in SD prompts: "a teapot made of clouds", "a cat wearing a space suit"."""
    shape = rng.randrange(3)
    if shape == 0:
        text = f"{_with_article(rng.choice(OBJECTS + BUILDINGS))} made of {rng.choice(MATERIALS)}"
    elif shape == 1:
        text = f"{_with_article(rng.choice(_KINDS['animal'][0]))} {rng.choice(CLOTHING)}"
    else:
        building = _with_article(rng.choice(BUILDINGS))
        text = f"{building} on the back of a giant {rng.choice(('turtle', 'whale', 'elephant', 'snail', 'camel'))}"
    return f"{text} {rng.choice(SETTINGS)}, {', '.join(_tags(rng, 1, 4))}"


def _t_long(rng: random.Random) -> str:
    """A long description, 35+ words: scene sentence, background sentence, atmosphere, then tags."""
    kind = rng.choice(("person", "animal", "object", "vehicle", "food"))
    first = f"{_with_article(rng.choice(MEDIA))} of {_subject(rng, kind)} {_doing(rng, kind)} {rng.choice(SETTINGS)}"
    if kind == "person":
        first += f", {rng.choice(CLOTHING)}"
    back_kind = rng.choice(("building", "landscape"))
    second = f"In the background {_subject(rng, back_kind)} {_doing(rng, back_kind)}"
    third = f"The scene is full of {rng.choice(ATMOSPHERE)} and {rng.choice(ATMOSPHERE)}, {rng.choice(MOODS)}"
    tags = [rng.choice(LIGHTING), rng.choice(CAMERA), f"inspired by {rng.choice(STYLES)}", *_tags(rng, 3, 7)]
    return f"{first} {rng.choice(TIMES)}. {second}. {third}. {', '.join(dict.fromkeys(tags))}"


def _t_foreign(rng: random.Random) -> str:
    """A prompt in another language or script: subject, place, one or two tails."""
    subjects, places, tails, sep = FOREIGN[rng.choice(sorted(FOREIGN))]
    tails_ = rng.sample(list(tails), rng.randint(1, 2))
    if sep in ("、", "，"):  # CJK prompts: a tag list, no spaces
        return sep.join([rng.choice(subjects), rng.choice(places), *tails_])
    return sep.join([f"{rng.choice(subjects)} {rng.choice(places)}", *tails_])


# fmt: off
_TEMPLATES: tuple[tuple[Callable[[random.Random], str], float], ...] = (
    (_t_short, 9), (_t_short_medium, 7), (_t_caption, 15), (_t_tags, 20), (_t_portrait, 8), (_t_pair, 7),
    (_t_style, 9), (_t_landscape, 7), (_t_surreal, 5), (_t_long, 13),
)
# fmt: on


def caption_words(prompt: str) -> list[str]:
    """The lower-cased words of ``prompt`` (runs of letters and digits), as used for the reserved-word rule."""
    return [w.lower() for w in _WORD.findall(prompt)]


def _has_emoji(text: str) -> bool:
    """True when ``text`` holds a pictographic character (emoji blocks, dingbats, variation selectors)."""
    return any(0x1F000 <= ord(c) <= 0x1FAFF or 0x2600 <= ord(c) <= 0x27BF or 0xFE00 <= ord(c) <= 0xFE0F for c in text)


def is_clean(prompt: str) -> bool:
    """True when ``prompt`` holds no reserved trigger word, no ``zzzz`` at all and no emoji."""
    return (
        "zzzz" not in prompt.lower()
        and not RESERVED_WORDS.intersection(caption_words(prompt))
        and not _has_emoji(prompt)
    )


def _one(rng: random.Random) -> str:
    """One prompt: a foreign one with probability FOREIGN_SHARE, else an English template by weight."""
    if rng.random() < FOREIGN_SHARE:
        return _t_foreign(rng)
    funcs, weights = zip(*_TEMPLATES, strict=True)
    text = rng.choices(funcs, weights=weights)[0](rng)
    return text[0].upper() + text[1:] if rng.random() < 0.1 else text


def corpus(n: int = 4000, seed: int = 0) -> list[str]:
    """``n`` distinct image prompts, deterministic for ``(n, seed)``.

    Prompts are distinct after lower-casing and collapsing whitespace. ``corpus(n, s)`` is a prefix of
    ``corpus(m, s)`` for n <= m.

    Raises:
        ValueError: if ``n`` is negative or that many distinct prompts cannot be generated.
    """
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    rng = random.Random(f"amdet-prompts/{seed}")
    seen: set[str] = set()
    out: list[str] = []
    budget = 50 * n + 1000  # draws before giving up; 4,000 prompts need about 4,100
    while len(out) < n and budget > 0:
        budget -= 1
        text = " ".join(_one(rng).split())
        key = text.lower()
        if key in seen or not is_clean(text):
            continue
        seen.add(key)
        out.append(text)
    if len(out) < n:
        raise ValueError(f"could only generate {len(out)} distinct prompts, {n} requested")
    return out


@lru_cache(maxsize=1)
def default_corpus() -> tuple[str, ...]:
    """The scan's default corpus: ``corpus(4000, 0)``, cached."""
    return tuple(corpus(4000, 0))


def split(prompts: Sequence[str], test_fraction: float = 0.2) -> tuple[list[str], list[str]]:
    """Deterministic train/test split by index, spreading the test prompts evenly.

    Prompt ``i`` goes to test when ``floor((i + 1) * f) > floor(i * f)`` with ``f = test_fraction`` (taken as
    an exact fraction), so ``f = 0.2`` puts every 5th prompt (indices 4, 9, 14, ...) in test. Order is kept.

    Returns:
        (train, test).

    Raises:
        ValueError: if ``test_fraction`` is outside [0, 1].
    """
    if not 0.0 <= test_fraction <= 1.0:
        raise ValueError(f"test_fraction must be in [0, 1], got {test_fraction}")
    f = Fraction(test_fraction).limit_denominator(10_000)
    train: list[str] = []
    test: list[str] = []
    for i, prompt in enumerate(prompts):
        is_test = (f * (i + 1)).__floor__() > (f * i).__floor__()
        (test if is_test else train).append(prompt)
    return train, test
