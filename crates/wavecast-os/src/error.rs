//! One way to print an error with its causes.

use std::fmt;

/// Displays an error and each of its causes, `outer: inner: innermost`, as `anyhow`'s `{:#}`
/// does. A cause whose text its parent already contains is skipped, because many libraries
/// repeat their source's message in their own.
pub struct Chain<'a>(pub &'a (dyn std::error::Error + 'a));

impl fmt::Display for Chain<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut shown = self.0.to_string();
        f.write_str(&shown)?;
        let mut cur = self.0.source();
        while let Some(cause) = cur {
            let text = cause.to_string();
            if !shown.contains(&text) {
                write!(f, ": {text}")?;
                shown = text;
            }
            cur = cause.source();
        }
        Ok(())
    }
}

/// The error and its causes as one line; see [`Chain`].
pub fn chain(e: &dyn std::error::Error) -> String {
    Chain(e).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug)]
    struct E(&'static str, Option<Box<E>>);
    impl fmt::Display for E {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str(self.0)
        }
    }
    impl std::error::Error for E {
        fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
            self.1.as_deref().map(|e| e as _)
        }
    }

    #[test]
    fn prints_every_cause_once() {
        let e = E("publishing m@1", Some(Box::new(E("reading m.onnx", Some(Box::new(E("No such file", None)))))));
        assert_eq!(chain(&e), "publishing m@1: reading m.onnx: No such file");
        // A cause that only repeats its parent's text is not printed twice.
        let e = E("timed out: connection reset", Some(Box::new(E("connection reset", None))));
        assert_eq!(chain(&e), "timed out: connection reset");
    }
}
