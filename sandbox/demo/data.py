"""Static data of the demo shop: countries, the catalogue, names and addresses to draw from."""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal

#: (alpha-2, alpha-3, numeric, printable name, official name)
COUNTRIES = [
    ("GB", "GBR", "826", "United Kingdom", "United Kingdom of Great Britain and Northern Ireland"),
    ("US", "USA", "840", "United States", "United States of America"),
    ("DE", "DEU", "276", "Germany", "Federal Republic of Germany"),
    ("FR", "FRA", "250", "France", "French Republic"),
    ("NL", "NLD", "528", "Netherlands", "Kingdom of the Netherlands"),
]

PRODUCT_CLASS = "Home & garden"
PARTNER = "Omnichannel Home Ltd"

#: Category path -> (background colour of its product pictures, a line for descriptions).
CATEGORIES: dict[str, tuple[tuple[int, int, int], str]] = {
    "Kitchen > Fridges": ((70, 130, 180), "Energy rating A, five-year parts and labour warranty."),
    "Kitchen > Kettles": ((205, 92, 92), "Boil-dry protection and a washable limescale filter."),
    "Kitchen > Coffee machines": ((139, 90, 43), "Descaling kit and two sample bags included."),
    "Living room > Lamps": ((218, 165, 32), "Takes an E27 LED bulb (not included)."),
    "Living room > Sofas": ((106, 90, 205), "Free delivery to your room of choice."),
    "Living room > Rugs": ((178, 34, 84), "Machine-washable at 30 degrees."),
    "Garden > Barbecues": ((60, 60, 60), "Cover and a set of tongs included."),
    "Garden > Furniture": ((46, 139, 87), "Weather-proof finish, stores flat for winter."),
    "Garden > Tools": ((85, 107, 47), "Ten-year guarantee against manufacturing defects."),
}


@dataclass(frozen=True)
class ProductSpec:
    category: str
    title: str
    price: Decimal
    blurb: str


def _p(category: str, title: str, price: str, blurb: str) -> ProductSpec:
    return ProductSpec(category, title, Decimal(price), blurb)


_PRODUCTS_BY_CATEGORY = [
    [
        _p("Kitchen > Fridges", "Frostline 55 Tall Fridge", "449.00", "A quiet 250-litre larder."),
        _p("Kitchen > Fridges", "Frostline Mini Bar Fridge", "179.00", "Fits under any worktop."),
        _p("Kitchen > Fridges", "Arctica American Fridge Freezer", "1199.00", "Ice and water."),
        _p("Kitchen > Fridges", "Arctica Retro Fridge", "649.00", "Fifties curves."),
    ],
    [
        _p("Kitchen > Kettles", "Brewmaster Glass Kettle", "39.99", "Blue light as it boils."),
        _p("Kitchen > Kettles", "Brewmaster Quiet Boil Kettle", "54.99", "Whisper-quiet boil."),
        _p("Kitchen > Kettles", "Hearth Stovetop Kettle", "44.00", "Enamel, whistles."),
    ],
    [
        _p("Kitchen > Coffee machines", "Crema Bean-to-Cup", "399.00", "Grinds fresh each cup."),
        _p("Kitchen > Coffee machines", "Crema Pod Machine", "89.00", "Coffee in 30 seconds."),
        _p("Kitchen > Coffee machines", "Pourover Drip Brewer", "64.50", "Ten cups, timer."),
    ],
    [
        _p("Living room > Lamps", "Halo Arc Floor Lamp", "129.00", "Arches over the sofa."),
        _p("Living room > Lamps", "Halo Ceramic Table Lamp", "59.00", "Hand-glazed base."),
        _p("Living room > Lamps", "Glowworm Reading Lamp", "42.00", "Dimmable, flexible neck."),
    ],
    [
        _p("Living room > Sofas", "Cloud Three-Seater Sofa", "899.00", "Deep feather cushions."),
        _p("Living room > Sofas", "Cloud Corner Sofa", "1349.00", "Left or right hand."),
        _p("Living room > Sofas", "Nook Two-Seater Sofa", "579.00", "For smaller rooms."),
        _p("Living room > Sofas", "Nook Sofa Bed", "699.00", "Pulls out into a double."),
    ],
    [
        _p("Living room > Rugs", "Kasbah Wool Rug 160x230", "189.00", "Hand-tufted wool."),
        _p("Living room > Rugs", "Stripe Flatweave Rug", "79.00", "Reversible cotton."),
        _p("Living room > Rugs", "Shaggy Round Rug", "99.00", "Soft underfoot."),
    ],
    [
        _p("Garden > Barbecues", "Ember Kettle Barbecue", "149.00", "Classic charcoal kettle."),
        _p("Garden > Barbecues", "Ember Three-Burner Gas Grill", "429.00", "Side burner."),
        _p("Garden > Barbecues", "Ember Portable Grill", "69.00", "Folds into a case."),
    ],
    [
        _p("Garden > Furniture", "Terrace Bistro Set", "159.00", "Two chairs and a table."),
        _p("Garden > Furniture", "Terrace Six-Seat Dining Set", "749.00", "Acacia hardwood."),
        _p("Garden > Furniture", "Hammock with Stand", "119.00", "Steel stand, no trees."),
    ],
    [
        _p("Garden > Tools", "Greenthumb Cordless Mower", "279.00", "40 minutes per charge."),
        _p("Garden > Tools", "Greenthumb Hedge Trimmer", "89.00", "Cuts 24 mm branches."),
        _p("Garden > Tools", "Stainless Steel Spade", "34.99", "Ash handle."),
        _p("Garden > Tools", "Rotary Washing Line", "49.00", "Forty metres of line."),
    ],
]


def _interleave(groups: list[list[ProductSpec]]) -> list[ProductSpec]:
    """One product of each category in turn, so that the first few cover every category."""
    result: list[ProductSpec] = []
    for row in range(max(len(g) for g in groups)):
        result.extend(group[row] for group in groups if row < len(group))
    return result


#: The catalogue; a demo of N products uses the first N (all categories appear from N=9).
PRODUCTS = _interleave(_PRODUCTS_BY_CATEGORY)

FIRST_NAMES = [
    "Olivia", "Amelia", "Isla", "Ava", "Mia", "Ivy", "Lily", "Freya", "Grace", "Sophia",
    "Noah", "Oliver", "George", "Arthur", "Leo", "Harry", "Oscar", "Archie", "Henry", "Jack",
    "Priya", "Aisha", "Mohammed", "Yusuf", "Zara", "Chen", "Sanjay", "Niamh", "Callum", "Rhys",
]  # fmt: skip
LAST_NAMES = [
    "Smith", "Jones", "Taylor", "Brown", "Williams", "Wilson", "Johnson", "Davies", "Patel",
    "Robinson", "Wright", "Thompson", "Evans", "Walker", "White", "Roberts", "Green", "Hall",
    "Khan", "Clarke", "Lewis", "Wood", "Harris", "Martin", "Jackson", "Clark", "Murphy",
    "O'Brien", "Campbell", "Hughes",
]  # fmt: skip
EMAIL_DOMAINS = ["example.com", "example.org", "example.net"]

#: UK mobile prefixes (after the 0) whose numbers ``phonenumbers`` accepts as valid.
MOBILE_PREFIXES = ["7912", "7400", "7440", "7500", "7520", "7721", "7824", "7850", "7957", "7960"]

STREETS = [
    "High Street", "Station Road", "Church Lane", "Victoria Road", "Mill Lane", "Park Avenue",
    "Queens Road", "The Crescent", "Manor Way", "Kings Road", "Orchard Close", "Elm Grove",
]  # fmt: skip
#: (town, postcode district)
TOWNS = [
    ("London", "N1"), ("London", "SE15"), ("Manchester", "M4"), ("Bristol", "BS6"),
    ("Leeds", "LS6"), ("Glasgow", "G12"), ("Cardiff", "CF10"), ("Edinburgh", "EH3"),
    ("Brighton", "BN1"), ("York", "YO1"), ("Norwich", "NR2"), ("Belfast", "BT7"),
]  # fmt: skip
