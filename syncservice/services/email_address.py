"""Email addresses for new persons: the pinyin of the name, a numeric suffix on collision."""

import functools
import re
import unicodedata
from collections import Counter

from django.conf import settings
from pypinyin import Style, lazy_pinyin

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
_COMPOUND_FIRST = sorted(SURNAME_READINGS, key=len, reverse=True)
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
        surname = next((s for s in _COMPOUND_FIRST if name.startswith(s)), None)
        if surname is not None:
            parts.append(SURNAME_READINGS[surname])
            name = name[len(surname):]
    # ü is written as v (lǚ → lv), the usual convention in Chinese mail addresses.
    parts += lazy_pinyin(name, style=Style.NORMAL, errors=lambda chars: _ascii_fold(chars))
    return _not_local_re.sub("", "".join(parts).lower())[:MAX_LOCAL_BASE]


def _address(base: str, n: int, domain: str) -> str:
    return f"{base}@{domain}" if n == 1 else f"{base}{n}@{domain}"


def allocate_email_addresses(persons: list[HrPerson], *, domain: str | None = None,
                             window: int = 8, avoid: set[str] | None = None) -> None:
    """Give every person in the list without an email a free address, in place.

    Addresses already in the database, given to another person of the list, or in ``avoid`` are skipped;
    the caller inserts under the unique constraint on HrPerson.email and retries on a race. One query
    per round of candidates, whatever the number of persons.
    """
    domain = domain or settings.EMAIL_DOMAIN
    taken = {address.lower() for address in (avoid or set())}
    taken |= {p.email.lower() for p in persons if p.email}
    waiting = [p for p in persons if not p.email]
    bases = {p.pk or id(p): email_local_base(p.full_name, p.employee_number) for p in waiting}
    next_n: dict[str, int] = {}
    while waiting:
        # Each base's window covers twice its waiting namesakes, so one round usually settles everyone.
        wanted = Counter(bases.values())
        round_start = {base: next_n.get(base, 1) for base in wanted}
        round_end = {base: round_start[base] + window + 2 * count for base, count in wanted.items()}
        candidates = {
            _address(base, n, domain) for base in wanted for n in range(round_start[base], round_end[base])
        }
        in_use = {e.lower() for e in HrPerson.objects.filter(email__in=candidates).values_list("email", flat=True)}
        taken |= in_use
        still_waiting = []
        for person in waiting:
            base = bases[person.pk or id(person)]
            for n in range(next_n.get(base, 1), round_end[base]):
                address = _address(base, n, domain)
                if address not in taken:
                    person.email = address
                    taken.add(address)
                    next_n[base] = n + 1
                    break
            else:
                next_n[base] = round_end[base]
                still_waiting.append(person)
        waiting = still_waiting
        bases = {key: bases[key] for key in (p.pk or id(p) for p in waiting)}
