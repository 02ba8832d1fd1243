"""Email addresses for new persons: the pinyin of the name, a numeric suffix on collision."""

import functools
import re
import unicodedata

from django.conf import settings
from django.db import connection

from ..models import HrPerson

# Surnames whose reading as a surname differs from the character's common reading, and compound surnames.
SURNAME_READINGS = {
    "万俟": "moqi", "尉迟": "yuchi", "单于": "chanyu", "长孙": "zhangsun", "澹台": "tantai", "欧阳": "ouyang",
    "司马": "sima", "上官": "shangguan", "诸葛": "zhuge", "东方": "dongfang", "皇甫": "huangfu",
    "令狐": "linghu", "慕容": "murong", "夏侯": "xiahou", "宇文": "yuwen", "公孙": "gongsun", "司徒": "situ",
    "司空": "sikong", "轩辕": "xuanyuan", "独孤": "dugu", "南宫": "nangong", "西门": "ximen", "呼延": "huyan",
    "端木": "duanmu", "百里": "baili", "东郭": "dongguo", "闻人": "wenren", "钟离": "zhongli",
    "曾": "zeng", "单": "shan", "仇": "qiu", "解": "xie", "区": "ou", "朴": "piao", "查": "zha", "盖": "ge",
    "缪": "miao", "乐": "yue", "尉": "yu", "繁": "po", "覃": "qin", "翟": "zhai", "种": "chong", "召": "shao",
    "员": "yun", "华": "hua", "任": "ren", "冼": "xian", "秘": "bi", "谌": "chen", "眭": "sui", "宓": "fu",
    "沈": "shen", "长": "chang", "重": "chong", "柏": "bai", "藏": "zang", "折": "she", "么": "yao",
    "曲": "qu", "句": "gou", "阚": "kan", "蕃": "pi",
}
_SURNAME_LENGTHS = sorted({len(surname) for surname in SURNAME_READINGS}, reverse=True)
_han_re = re.compile(r"[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff]")
_not_local_re = re.compile(r"[^a-z0-9]+")
MAX_LOCAL_BASE = 48
FALLBACK_PREFIX = "user"


# Latin letters that do not decompose into a base letter and a mark (NFKD leaves them whole).
_LATIN_LETTERS = str.maketrans({
    "ß": "ss", "ẞ": "ss", "æ": "ae", "Æ": "ae", "œ": "oe", "Œ": "oe", "ø": "o", "Ø": "o", "đ": "d", "Đ": "d",
    "ð": "d", "Ð": "d", "ł": "l", "Ł": "l", "þ": "th", "Þ": "th", "ı": "i", "ħ": "h", "Ħ": "h",
})


def _ascii_fold(text: str) -> str:
    """José Ñúñez → josenunez, Łukasz Søby → lukaszsoby; characters with no Latin reading drop out."""
    decomposed = unicodedata.normalize("NFKD", text.translate(_LATIN_LETTERS))
    return _not_local_re.sub("", "".join(c for c in decomposed if not unicodedata.combining(c)).lower())


def email_local_base(full_name: str, employee_number: str) -> str:
    """The address's local part before any collision suffix."""
    local = name_reading(full_name)
    if not local or local[0].isdigit():
        # No reading at all (emoji, unknown script): fall back to the employee number, cut like any base so
        # that the local part stays within the 64 characters mail systems accept, suffix included.
        local = (FALLBACK_PREFIX + _not_local_re.sub("", employee_number.lower()))[:MAX_LOCAL_BASE]
    return local.rstrip(".")


@functools.lru_cache(maxsize=8192)
def name_reading(full_name: str) -> str:
    """The pinyin (or Latin) reading of a name, lower case, letters and digits only. Batches repeat names and
    pypinyin is the slow part of allocation, so readings are remembered."""
    name = unicodedata.normalize("NFC", full_name.strip())
    parts: list[str] = []
    if _han_re.match(name):
        # Longest first: a compound surname wins over its first character's reading.
        surname = next((name[:n] for n in _SURNAME_LENGTHS if name[:n] in SURNAME_READINGS), None)
        if surname is not None:
            parts.append(SURNAME_READINGS[surname])
            name = name[len(surname):]
    # Imported here: loading pypinyin's dictionaries takes ~0.6 s, which every process that merely imports
    # this module (the process stage, for e-mail reallocation) would otherwise pay at start-up.
    from pypinyin import Style, lazy_pinyin

    # ü is written as v (lǚ → lv), the usual convention in Chinese mail addresses.
    parts += lazy_pinyin(name, style=Style.NORMAL, errors=lambda chars: _ascii_fold(chars))
    return _not_local_re.sub("", "".join(parts).lower())[:MAX_LOCAL_BASE]


def _address(base: str, n: int, domain: str) -> str:
    return f"{base}@{domain}" if n == 1 else f"{base}{n}@{domain}"


# Above every string a suffixed address of a base can continue with (digits, "@", the domain, at most 254
# characters in all), in the C collation as in linguistic ones, where punctuation may be ignored.
_RANGE_END = "z" * 255


def _suffixes_in_use(bases: set[str], domain: str) -> dict[str, set[int] | range]:
    """The suffixes of `base…@domain` addresses already in the table, per base.

    On PostgreSQL the database first counts each base's suffixes and finds the highest: allocation always
    takes the lowest free suffix, so a base's namesakes are nearly always exactly 1…max, and then nothing
    but those two numbers crosses the wire (reading every namesake's address would grow with the table).
    Only bases with gaps (a person deleted, an address reallocated) have their addresses read.
    """
    if not bases:
        return {}
    if connection.vendor != "postgresql":
        return _suffixes_of_addresses(bases, domain)
    used: dict[str, set[int] | range] = {}
    gaps = set()
    for base, count, highest in _suffix_counts(sorted(bases), domain):
        if count == highest:
            used[base] = range(1, int(highest) + 1)
        else:
            gaps.add(base)
    if gaps:
        used.update(_suffixes_of_addresses(gaps, domain))
    return used


def _suffix_counts(bases: list[str], domain: str) -> list[tuple[str, int, int]]:
    """(base, number of its suffixes in use, highest suffix in use) for the bases that have any."""
    table = HrPerson._meta.db_table
    tail = f"@{domain}"
    exact = [_address(base, 1, domain) for base in bases]
    low, high = [f"{base}0" for base in bases], [f"{base}9{_RANGE_END}" for base in bases]
    with connection.cursor() as cursor:
        # A suffix is the digits between the base and "@domain", no leading zero, 2 or more (1 is `base@`).
        cursor.execute(
            f"SELECT b.base, count(*), max(h.n) FROM unnest(%s::text[], %s::text[], %s::text[], %s::text[]) "
            f"AS b(base, exact, low, high) CROSS JOIN LATERAL ("
            f" SELECT 1::numeric AS n FROM {table} WHERE email = b.exact"
            f" UNION ALL SELECT x.s::numeric FROM (SELECT substr(email, length(b.base) + 1,"
            f" length(email) - length(b.base) - %s) AS s FROM {table}"
            f" WHERE email >= b.low AND email < b.high AND right(email, %s) = %s) x"
            f" WHERE x.s ~ '^([2-9]|[1-9][0-9]+)$') h GROUP BY b.base",
            [bases, exact, low, high, len(tail), len(tail), tail],
        )
        return cursor.fetchall()


def _suffixes_of_addresses(bases: set[str], domain: str) -> dict[str, set[int]]:
    """The suffixes of these bases in use, from every address that may be one of theirs."""
    addresses = _addresses_of_bases(sorted(bases), domain)
    used: dict[str, set[int]] = {}
    tail = f"@{domain}"
    for address in addresses:
        if not address.endswith(tail):
            continue
        local = address[:-len(tail)]
        digits = len(local) - len(local.rstrip("0123456789"))
        # "wangwei12" is wangwei's 12th, but also wangwei1's 2nd: try every split of the trailing digits.
        for cut in range(digits + 1):
            base, suffix = local[:len(local) - cut], local[len(local) - cut:]
            if base not in bases:
                continue
            if not suffix:
                used.setdefault(base, set()).add(1)
            elif suffix[0] != "0" and int(suffix) >= 2:
                used.setdefault(base, set()).add(int(suffix))
    return used


def _addresses_of_bases(bases: list[str], domain: str) -> list[str]:
    table = HrPerson._meta.db_table
    exact = [_address(base, 1, domain) for base in bases]
    low, high = [f"{base}0" for base in bases], [f"{base}9{_RANGE_END}" for base in bases]
    with connection.cursor() as cursor:
        if connection.vendor == "postgresql":
            cursor.execute(
                f"SELECT email FROM {table} WHERE email = ANY(%s) UNION ALL "
                f"SELECT h.email FROM unnest(%s::text[], %s::text[]) AS b(low, high) "
                f"CROSS JOIN LATERAL (SELECT email FROM {table} WHERE email >= b.low AND email < b.high) h",
                [exact, low, high],
            )
            return [row[0] for row in cursor.fetchall()]
        # SQLite: the same lookups from a VALUES list, in chunks that stay under its parameter limit.
        addresses, bounds = [], list(zip(exact, low, high))
        for start in range(0, len(bounds), 300):
            rows = bounds[start:start + 300]
            values = ", ".join(["(%s, %s, %s)"] * len(rows))
            cursor.execute(
                f"WITH b(exact, low, high) AS (VALUES {values}) SELECT h.email FROM b JOIN {table} h "
                f"ON h.email = b.exact OR (h.email >= b.low AND h.email < b.high)",
                [value for row in rows for value in row],
            )
            addresses += [row[0] for row in cursor.fetchall()]
        return addresses


def allocate_email_addresses(persons: list[HrPerson], *, domain: str | None = None,
                             avoid: set[str] | None = None) -> None:
    """Give every person in the list without an email a free address, in place: `base@domain` for the
    first, then base2, base3… (the lowest suffix free). A person is an HrPerson or anything with its
    full_name, employee_number and email.

    Addresses already in the database, given to another person of the list, or in ``avoid`` are skipped;
    the caller inserts under the unique constraint on HrPerson.email and retries on a race. One query
    (two when some base has gaps in its suffixes), whatever the number of persons and of namesakes
    already in the table.
    """
    domain = domain or settings.EMAIL_DOMAIN
    taken = {address.lower() for address in (avoid or set())}
    taken |= {p.email.lower() for p in persons if p.email}
    waiting = [(p, email_local_base(p.full_name, p.employee_number)) for p in persons if not p.email]
    used = _suffixes_in_use({base for _, base in waiting}, domain)
    next_n: dict[str, int] = {}
    for person, base in waiting:
        in_use = used.get(base, ())
        n = next_n.get(base, 1)
        while n in in_use or _address(base, n, domain) in taken:
            n += 1
        person.email = _address(base, n, domain)
        next_n[base] = n + 1
