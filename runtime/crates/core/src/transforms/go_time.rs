//! Go's `time.Parse` with a Go reference-time layout (`2006-01-02T15:04:05.999Z`), for the jq
//! helpers `epoch` and `epochMillis`, which Snowbridge documents in Go layouts.
//!
//! Follows Go's `time/format.go` (`nextStdChunk` and `parse`): the same layout elements, the same
//! fixed/variable widths, a fraction in the input after seconds even when the layout has none,
//! `Z` zones, `-07:00` offsets and 12-hour clocks. A zone abbreviation (`MST`) is read and
//! taken as UTC, as Go does for an abbreviation it does not know; Go would use the offset of
//! a zone the machine's local zone knows by that name.

/// A parsed instant: seconds since the Unix epoch and nanoseconds within the second.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Instant {
    pub secs: i64,
    pub nanos: u32,
}

impl Instant {
    /// Go's `Time.UnixMilli`.
    pub fn millis(self) -> i64 {
        self.secs * 1000 + i64::from(self.nanos / 1_000_000)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Std {
    LongMonth,
    Month,
    NumMonth,
    ZeroMonth,
    LongWeekDay,
    WeekDay,
    Day,
    UnderDay,
    ZeroDay,
    UnderYearDay,
    ZeroYearDay,
    Hour,
    Hour12,
    ZeroHour12,
    Minute,
    ZeroMinute,
    Second,
    ZeroSecond,
    LongYear,
    Year,
    Pm,
    PmLower,
    Tz,
    /// `Z` variants (ISO 8601: `Z` for UTC), with the offset form: `(colons, seconds, minutes)`.
    Iso(bool, bool, bool),
    Num(bool, bool, bool),
    /// `.000` (exactly n digits) or `.999` (optional, any digits).
    Frac0(usize),
    Frac9,
}

/// Go's `nextStdChunk`: the literal before the next layout element, the element and the rest.
fn next_chunk(layout: &str) -> (&str, Option<(Std, usize)>) {
    let b = layout.as_bytes();
    let starts = |i: usize, s: &str| layout[i..].starts_with(s);
    for i in 0..b.len() {
        let hit: Option<(Std, usize)> = match b[i] {
            b'J' if starts(i, "January") => Some((Std::LongMonth, 7)),
            b'J' if starts(i, "Jan") => Some((Std::Month, 3)),
            b'M' if starts(i, "Monday") => Some((Std::LongWeekDay, 6)),
            b'M' if starts(i, "Mon") => Some((Std::WeekDay, 3)),
            b'M' if starts(i, "MST") => Some((Std::Tz, 3)),
            b'0' if starts(i, "002") => Some((Std::ZeroYearDay, 3)),
            b'0' if i + 1 < b.len() && (b'1'..=b'6').contains(&b[i + 1]) => Some((
                [
                    Std::ZeroMonth,
                    Std::ZeroDay,
                    Std::ZeroHour12,
                    Std::ZeroMinute,
                    Std::ZeroSecond,
                    Std::Year,
                ][usize::from(b[i + 1] - b'1')],
                2,
            )),
            b'1' if starts(i, "15") => Some((Std::Hour, 2)),
            b'1' => Some((Std::NumMonth, 1)),
            b'2' if starts(i, "2006") => Some((Std::LongYear, 4)),
            b'2' => Some((Std::Day, 1)),
            b'_' if starts(i, "_2") && !starts(i, "_2006") => Some((Std::UnderDay, 2)),
            b'_' if starts(i, "__2") => Some((Std::UnderYearDay, 3)),
            b'3' => Some((Std::Hour12, 1)),
            b'4' => Some((Std::Minute, 1)),
            b'5' => Some((Std::Second, 1)),
            b'P' if starts(i, "PM") => Some((Std::Pm, 2)),
            b'p' if starts(i, "pm") => Some((Std::PmLower, 2)),
            b'-' | b'Z' => {
                let iso = b[i] == b'Z';
                let mk = |c, s, m| {
                    if iso {
                        Std::Iso(c, s, m)
                    } else {
                        Std::Num(c, s, m)
                    }
                };
                let p = &layout[i + 1..];
                if p.starts_with("070000") {
                    Some((mk(false, true, true), 7))
                } else if p.starts_with("07:00:00") {
                    Some((mk(true, true, true), 9))
                } else if p.starts_with("0700") {
                    Some((mk(false, false, true), 5))
                } else if p.starts_with("07:00") {
                    Some((mk(true, false, true), 6))
                } else if p.starts_with("07") {
                    Some((mk(false, false, false), 3))
                } else {
                    None
                }
            }
            b'.' | b',' if i + 1 < b.len() && (b[i + 1] == b'0' || b[i + 1] == b'9') => {
                let c = b[i + 1];
                let mut j = i + 1;
                while j < b.len() && b[j] == c {
                    j += 1;
                }
                if j < b.len() && b[j].is_ascii_digit() {
                    None
                } else if c == b'0' {
                    Some((Std::Frac0(j - i - 1), j - i))
                } else {
                    Some((Std::Frac9, j - i))
                }
            }
            _ => None,
        };
        if let Some((std, len)) = hit {
            return (&layout[..i], Some((std, i + len)));
        }
    }
    (layout, None)
}

const MONTHS: [&str; 12] = [
    "January",
    "February",
    "March",
    "April",
    "May",
    "June",
    "July",
    "August",
    "September",
    "October",
    "November",
    "December",
];
const DAYS: [&str; 7] = [
    "Sunday",
    "Monday",
    "Tuesday",
    "Wednesday",
    "Thursday",
    "Friday",
    "Saturday",
];

/// Go's `getnum`: one or two digits (exactly two when `fixed`).
fn getnum(v: &str, fixed: bool) -> Option<(i64, &str)> {
    let b = v.as_bytes();
    if b.is_empty() || !b[0].is_ascii_digit() {
        return None;
    }
    if b.len() < 2 || !b[1].is_ascii_digit() {
        if fixed {
            return None;
        }
        return Some((i64::from(b[0] - b'0'), &v[1..]));
    }
    Some((
        i64::from(b[0] - b'0') * 10 + i64::from(b[1] - b'0'),
        &v[2..],
    ))
}

/// Go's `getnum3`: one to three digits (exactly three when `fixed`).
fn getnum3(v: &str, fixed: bool) -> Option<(i64, &str)> {
    let n = v.bytes().take(3).take_while(u8::is_ascii_digit).count();
    if n == 0 || (fixed && n != 3) {
        return None;
    }
    Some((v[..n].parse().ok()?, &v[n..]))
}

fn lookup<'a>(v: &'a str, names: &[&str], len: Option<usize>) -> Option<(i64, &'a str)> {
    for (i, name) in names.iter().enumerate() {
        let name = len.map_or(*name, |l| &name[..l]);
        if v.len() >= name.len() && v[..name.len()].eq_ignore_ascii_case(name) {
            return Some((i as i64, &v[name.len()..]));
        }
    }
    None
}

fn frac_nanos(digits: &str) -> Option<u32> {
    let mut n: u64 = 0;
    for (i, c) in digits.bytes().enumerate() {
        if i < 9 {
            n = n * 10 + u64::from(c - b'0');
        }
    }
    for _ in digits.len()..9 {
        n *= 10;
    }
    u32::try_from(n).ok()
}

fn is_leap(y: i64) -> bool {
    y % 4 == 0 && (y % 100 != 0 || y % 400 == 0)
}

fn days_in(month: i64, year: i64) -> i64 {
    match month {
        2 if is_leap(year) => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's `days_from_civil`).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146097 + doe - 719468
}

/// Go's `time.Parse(layout, value)`. The error is only "does not match": the jq helpers give
/// Snowbridge's own message, which does not carry Go's detail.
pub fn parse(layout: &str, value: &str) -> Result<Instant, ()> {
    let (mut year, mut month, mut day, mut yday) = (0i64, -1i64, -1i64, -1i64);
    let (mut hour, mut min, mut sec, mut nanos) = (0i64, 0i64, 0i64, 0u32);
    let (mut pm, mut am) = (false, false);
    let mut offset: i64 = 0;
    let mut layout = layout;
    let mut v = value;
    loop {
        let (prefix, chunk) = next_chunk(layout);
        v = v.strip_prefix(prefix).ok_or(())?;
        let Some((std, end)) = chunk else {
            if !v.is_empty() {
                return Err(());
            }
            break;
        };
        layout = &layout[end..];
        match std {
            Std::Year => {
                let n: i64 = v.get(..2).ok_or(())?.parse().map_err(|_| ())?;
                if !v.as_bytes()[..2].iter().all(u8::is_ascii_digit) {
                    return Err(());
                }
                year = if n >= 69 { 1900 + n } else { 2000 + n };
                v = &v[2..];
            }
            Std::LongYear => {
                let d = v.get(..4).ok_or(())?;
                if !d.bytes().all(|c| c.is_ascii_digit()) {
                    return Err(());
                }
                year = d.parse().map_err(|_| ())?;
                v = &v[4..];
            }
            Std::Month => (month, v) = lookup(v, &MONTHS, Some(3)).ok_or(())?,
            Std::LongMonth => (month, v) = lookup(v, &MONTHS, None).ok_or(())?,
            Std::NumMonth | Std::ZeroMonth => {
                (month, v) = getnum(v, std == Std::ZeroMonth).ok_or(())?;
                if !(1..=12).contains(&month) {
                    return Err(());
                }
                month -= 1;
            }
            Std::WeekDay => (_, v) = lookup(v, &DAYS, Some(3)).ok_or(())?,
            Std::LongWeekDay => (_, v) = lookup(v, &DAYS, None).ok_or(())?,
            Std::Day | Std::UnderDay | Std::ZeroDay => {
                if std == Std::UnderDay && v.starts_with(' ') {
                    v = &v[1..];
                }
                (day, v) = getnum(v, std == Std::ZeroDay).ok_or(())?;
            }
            Std::UnderYearDay | Std::ZeroYearDay => {
                for _ in 0..2 {
                    if std == Std::UnderYearDay && v.starts_with(' ') {
                        v = &v[1..];
                    }
                }
                (yday, v) = getnum3(v, std == Std::ZeroYearDay).ok_or(())?;
            }
            Std::Hour => {
                (hour, v) = getnum(v, false).ok_or(())?;
                if hour >= 24 {
                    return Err(());
                }
            }
            Std::Hour12 | Std::ZeroHour12 => {
                (hour, v) = getnum(v, std == Std::ZeroHour12).ok_or(())?;
                if hour > 12 {
                    return Err(());
                }
            }
            Std::Minute | Std::ZeroMinute => {
                (min, v) = getnum(v, std == Std::ZeroMinute).ok_or(())?;
                if min >= 60 {
                    return Err(());
                }
            }
            Std::Second | Std::ZeroSecond => {
                (sec, v) = getnum(v, std == Std::ZeroSecond).ok_or(())?;
                if sec >= 60 {
                    return Err(());
                }
                // A fraction in the input that the layout does not name (unless it names one
                // next) is read all the same.
                let b = v.as_bytes();
                if b.len() >= 2 && (b[0] == b'.' || b[0] == b',') && b[1].is_ascii_digit() {
                    let next = next_chunk(layout).1.map(|(s, _)| s);
                    if !matches!(next, Some(Std::Frac0(_) | Std::Frac9)) {
                        let n = 1 + b[1..].iter().take_while(|c| c.is_ascii_digit()).count();
                        nanos = frac_nanos(&v[1..n]).ok_or(())?;
                        v = &v[n..];
                    }
                }
            }
            Std::Pm | Std::PmLower => {
                let s = v.get(..2).ok_or(())?;
                let (p, a) = if std == Std::Pm {
                    ("PM", "AM")
                } else {
                    ("pm", "am")
                };
                if s == p {
                    pm = true;
                } else if s == a {
                    am = true;
                } else {
                    return Err(());
                }
                v = &v[2..];
            }
            Std::Iso(..) | Std::Num(..) => {
                let (colons, secs, mins) = match std {
                    Std::Iso(c, s, m) | Std::Num(c, s, m) => (c, s, m),
                    _ => unreachable!(),
                };
                if matches!(std, Std::Iso(..)) && v.starts_with('Z') {
                    v = &v[1..];
                    offset = 0;
                    continue;
                }
                let b = v.as_bytes();
                let sign = match b.first() {
                    Some(b'+') => 1,
                    Some(b'-') => -1,
                    _ => return Err(()),
                };
                let mut rest = &v[1..];
                let two = |r: &str| -> Result<i64, ()> {
                    let d = r.get(..2).ok_or(())?;
                    if !d.bytes().all(|c| c.is_ascii_digit()) {
                        return Err(());
                    }
                    d.parse().map_err(|_| ())
                };
                let hh = two(rest)?;
                rest = &rest[2..];
                let mut mm = 0;
                let mut ss = 0;
                if mins {
                    if colons {
                        rest = rest.strip_prefix(':').ok_or(())?;
                    }
                    mm = two(rest)?;
                    rest = &rest[2..];
                }
                if secs {
                    if colons {
                        rest = rest.strip_prefix(':').ok_or(())?;
                    }
                    ss = two(rest)?;
                    rest = &rest[2..];
                }
                if hh > 24 || mm >= 60 || ss >= 60 {
                    return Err(());
                }
                offset = sign * (hh * 3600 + mm * 60 + ss);
                v = rest;
            }
            Std::Tz => {
                if v.starts_with("UTC") {
                    v = &v[3..];
                } else {
                    let n = v.bytes().take_while(u8::is_ascii_uppercase).count();
                    if !(3..=5).contains(&n) {
                        return Err(());
                    }
                    v = &v[n..];
                }
            }
            Std::Frac0(n) => {
                // Go's parseNanoseconds: either separator, exactly n digits.
                let d = v.get(..n + 1).ok_or(())?;
                if !matches!(d.as_bytes()[0], b'.' | b',')
                    || !d[1..].bytes().all(|c| c.is_ascii_digit())
                {
                    return Err(());
                }
                nanos = frac_nanos(&d[1..]).ok_or(())?;
                v = &v[n + 1..];
            }
            Std::Frac9 => {
                let b = v.as_bytes();
                if b.len() < 2 || !(b[0] == b'.' || b[0] == b',') || !b[1].is_ascii_digit() {
                    continue;
                }
                let n = 1 + b[1..].iter().take_while(|c| c.is_ascii_digit()).count();
                nanos = frac_nanos(&v[1..n]).ok_or(())?;
                v = &v[n..];
            }
        }
    }
    if pm && hour < 12 {
        hour += 12;
    } else if am && hour == 12 {
        hour = 0;
    }
    if yday >= 0 {
        let leap = is_leap(year);
        if yday < 1 || yday > if leap { 366 } else { 365 } {
            return Err(());
        }
        let (mut m, mut d) = (1, yday);
        while d > days_in(m, year) {
            d -= days_in(m, year);
            m += 1;
        }
        if (month >= 0 && month + 1 != m) || (day >= 0 && day != d) {
            return Err(());
        }
        month = m - 1;
        day = d;
    } else {
        if month < 0 {
            month = 0;
        }
        if day < 0 {
            day = 1;
        }
    }
    if day < 1 || day > days_in(month + 1, year) {
        return Err(());
    }
    let days = days_from_civil(year, month + 1, day);
    let secs = days * 86400 + hour * 3600 + min * 60 + sec - offset;
    Ok(Instant { secs, nanos })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(layout: &str, v: &str) -> Option<i64> {
        parse(layout, v).ok().map(Instant::millis)
    }

    #[test]
    fn snowbridge_default_layout() {
        let l = "2006-01-02T15:04:05.999Z";
        assert_eq!(ms(l, "2024-10-28T15:27:47.100Z"), Some(1730129267100));
        assert_eq!(ms(l, "2019-05-10T14:40:35.972Z"), Some(1557499235972));
        // `.999`: the fraction is optional.
        assert_eq!(ms(l, "2019-05-10T14:40:35Z"), Some(1557499235000));
        assert_eq!(ms(l, "value"), None);
        assert_eq!(ms(l, "2019-05-10T14:40:35.972"), None, "literal Z missing");
    }

    #[test]
    fn other_layouts() {
        assert_eq!(
            ms("2006-01-02 15:04:05.999", "2024-10-28 15:27:47.100"),
            Some(1730129267100)
        );
        assert_eq!(
            ms("2006-01-02 15:04:05", "2024-10-28T15:27:47.100"),
            None,
            "Snowbridge test epochMillis_with_not_matching_timelayout"
        );
        // A fraction after seconds is read even when the layout has none.
        assert_eq!(
            ms("2006-01-02 15:04:05", "2024-10-28 15:27:47.1"),
            Some(1730129267100)
        );
        // RFC 3339 with an offset.
        assert_eq!(
            ms("2006-01-02T15:04:05Z07:00", "2024-10-28T17:27:47+02:00"),
            Some(1730129267000)
        );
        assert_eq!(
            ms("2006-01-02T15:04:05Z07:00", "2024-10-28T15:27:47Z"),
            Some(1730129267000)
        );
        assert_eq!(
            ms("Jan 2, 2006 at 3:04pm (MST)", "Feb 3, 2013 at 7:54pm (PST)"),
            Some(1359921240000)
        );
        assert_eq!(ms("02/01/06", "31/12/99"), Some(946598400000));
        assert_eq!(ms("2006-01-02", "2023-02-29"), None, "day out of range");
        assert_eq!(ms("2006-01-02", "2024-02-29"), Some(1709164800000));
        assert_eq!(ms(".000", ".12"), None, "exactly three digits");
    }
}
