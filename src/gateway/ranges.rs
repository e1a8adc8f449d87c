//! Ranges of an answer whose secrets are looked for. A range the engine
//! chose could cut a secret the service wrote back in two, each part found
//! in no search, and the engine would join them. So the service is asked
//! for the range widened on each side by one byte less than the longest
//! secret's spelling: every secret that reaches into the engine's range
//! lies whole within the widened one, is masked there, and only then is
//! the engine's range cut out of it.

/// One range of bytes as the engine asked for it (`Range: bytes=…`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Asked {
    /// `first-last`.
    Within(u64, u64),
    /// `first-`: to the end.
    From(u64),
    /// `-count`: the last `count` bytes.
    Last(u64),
}

/// What becomes of the service's part (206) of a widened range.
#[derive(Debug, PartialEq, Eq)]
pub enum Cut {
    /// The engine's range: `skip` bytes of the part go, the next `keep`
    /// bytes are the answer, described by `content_range`.
    Window {
        skip: u64,
        keep: u64,
        content_range: String,
    },
    /// The engine's range lies past the end (of `total` bytes), though
    /// the widened one did not: 416, as the service would have answered.
    PastTheEnd { total: u64 },
    /// Not the part asked for, or not one that can be checked (no total,
    /// another unit, a range not covering the widened one).
    Unusable,
}

fn number(text: &str) -> Option<u64> {
    (!text.is_empty() && text.len() <= 19 && text.bytes().all(|b| b.is_ascii_digit()))
        .then(|| text.parse().ok())
        .flatten()
}

impl Asked {
    /// The one range of a `Range` header; `None` for several ranges,
    /// another unit, or anything malformed (the call then asks for the
    /// whole answer).
    pub fn parse(header: &str) -> Option<Self> {
        let spec = header.trim().strip_prefix("bytes=")?.trim();
        let (first, last) = spec.split_once('-')?;
        match (number(first), last) {
            (None, count) if first.is_empty() => number(count).filter(|n| *n > 0).map(Self::Last),
            (Some(first), "") => Some(Self::From(first)),
            (Some(first), last) => number(last)
                .filter(|last| *last >= first)
                .map(|last| Self::Within(first, last)),
            (None, _) => None,
        }
    }

    /// The `Range` header that asks the service for this range widened by
    /// `pad` bytes on each side.
    pub fn widened(self, pad: u64) -> String {
        match self {
            Self::Within(first, last) => {
                format!("bytes={}-{}", first.saturating_sub(pad), last.saturating_add(pad))
            }
            Self::From(first) => format!("bytes={}-", first.saturating_sub(pad)),
            Self::Last(count) => format!("bytes=-{}", count.saturating_add(pad)),
        }
    }

    /// Where the engine's range lies in the service's part, described by
    /// its `Content-Range`, of the range [`widened`](Self::widened) by
    /// `pad`. The part must reach `pad` bytes beyond the engine's range on
    /// each side (or the representation's own start and end), or a secret
    /// reaching over its edge could not have been found whole.
    pub fn cut(self, pad: u64, content_range: &str) -> Cut {
        let Some((start, end, total)) = content_range
            .trim()
            .strip_prefix("bytes ")
            .and_then(|r| r.split_once('/'))
            .and_then(|(span, total)| {
                let (start, end) = span.split_once('-')?;
                Some((number(start)?, number(end)?, number(total)?))
            })
            .filter(|(start, end, total)| start <= end && end < total)
        else {
            return Cut::Unusable;
        };
        let (first, last) = match self {
            Self::Within(first, last) => (first, last.min(total - 1)),
            Self::From(first) => (first, total - 1),
            Self::Last(count) => (total.saturating_sub(count), total - 1),
        };
        if first >= total {
            return Cut::PastTheEnd { total };
        }
        let covers_start = start <= first.saturating_sub(pad);
        let covers_end = end >= last.saturating_add(pad).min(total - 1);
        if !covers_start || !covers_end || first > last {
            return Cut::Unusable;
        }
        Cut::Window {
            skip: first - start,
            keep: last - first + 1,
            content_range: format!("bytes {first}-{last}/{total}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_range_is_read_and_anything_else_is_not() {
        assert_eq!(Asked::parse("bytes=0-39"), Some(Asked::Within(0, 39)));
        assert_eq!(Asked::parse("bytes=40-"), Some(Asked::From(40)));
        assert_eq!(Asked::parse("bytes=-5"), Some(Asked::Last(5)));
        assert_eq!(Asked::parse(" bytes=7-7 "), Some(Asked::Within(7, 7)));
        for not in [
            "bytes=0-1,5-6",
            "bytes=9-3",
            "bytes=-0",
            "bytes=-",
            "bytes=a-b",
            "bytes=+1-2",
            "items=0-1",
            "bytes=0-99999999999999999999",
            "",
        ] {
            assert_eq!(Asked::parse(not), None, "{not}");
        }
    }

    #[test]
    fn the_service_is_asked_for_more_on_each_side() {
        assert_eq!(Asked::Within(40, 79).widened(10), "bytes=30-89");
        assert_eq!(Asked::Within(3, 5).widened(10), "bytes=0-15");
        assert_eq!(Asked::From(40).widened(10), "bytes=30-");
        assert_eq!(Asked::Last(5).widened(10), "bytes=-15");
        assert_eq!(Asked::Within(0, u64::MAX).widened(10), format!("bytes=0-{}", u64::MAX));
    }

    #[test]
    fn the_engines_range_is_cut_out_of_the_widened_part() {
        let window = |skip, keep, range: &str| Cut::Window {
            skip,
            keep,
            content_range: range.into(),
        };
        // 100 bytes; pad 10.
        assert_eq!(
            Asked::Within(40, 59).cut(10, "bytes 30-69/100"),
            window(10, 20, "bytes 40-59/100")
        );
        assert_eq!(
            Asked::Within(3, 5).cut(10, "bytes 0-15/100"),
            window(3, 3, "bytes 3-5/100")
        );
        assert_eq!(
            Asked::Within(90, 200).cut(10, "bytes 80-99/100"),
            window(10, 10, "bytes 90-99/100")
        );
        assert_eq!(
            Asked::From(40).cut(10, "bytes 30-99/100"),
            window(10, 60, "bytes 40-99/100")
        );
        assert_eq!(
            Asked::Last(5).cut(10, "bytes 85-99/100"),
            window(10, 5, "bytes 95-99/100")
        );
        assert_eq!(
            Asked::Last(500).cut(10, "bytes 0-99/100"),
            window(0, 100, "bytes 0-99/100")
        );
        assert_eq!(
            Asked::From(105).cut(10, "bytes 95-99/100"),
            Cut::PastTheEnd { total: 100 }
        );
        for (asked, range) in [
            // Not reaching far enough before or after the engine's range.
            (Asked::Within(40, 59), "bytes 35-69/100"),
            (Asked::Within(40, 59), "bytes 30-65/100"),
            (Asked::Last(5), "bytes 95-99/100"),
            // No total, another unit, nonsense.
            (Asked::Within(40, 59), "bytes 30-69/*"),
            (Asked::Within(40, 59), "items 30-69/100"),
            (Asked::Within(40, 59), "bytes 69-30/100"),
            (Asked::Within(40, 59), "bytes 30-100/100"),
            (Asked::Within(40, 59), ""),
        ] {
            assert_eq!(asked.cut(10, range), Cut::Unusable, "{asked:?} {range}");
        }
    }
}
