//! The training examples most like an evaluation example: where the fix for a failure usually lies (a
//! wrong or inconsistent answer to the same question, or no example of that kind at all).

use super::metrics::token_f1;
use crate::engine::chat::ChatMessage;
use crate::engine::data::validate::normalised_into;
use crate::engine::data::Dataset;

/// A training example and how alike its prompt is, from 0 (no word in common) to 1 (the same prompt
/// apart from case, spacing and punctuation, as the dataset checks compare rows).
#[derive(Debug, Clone, PartialEq)]
pub struct Neighbour {
    /// Index into the dataset's conversations.
    pub index: usize,
    pub similarity: f64,
}

/// The `k` training examples whose prompts are most like `prompt`, most alike first; ties keep file
/// order. System messages are left out of the comparison: they are usually shared by every row.
pub fn nearest(train: &Dataset, prompt: &[ChatMessage], k: usize) -> Vec<Neighbour> {
    let mut scratch = Vec::new();
    let mut key = |messages: &[ChatMessage]| -> (String, Vec<u8>) {
        let text = prompt_text(messages);
        normalised_into(&text, &mut scratch);
        (text, scratch.clone())
    };
    let (text, normal) = key(prompt);
    let mut found: Vec<Neighbour> = train
        .conversations
        .iter()
        .enumerate()
        .filter_map(|(index, c)| {
            let last = c.messages.iter().rposition(|m| m.role == "assistant")?;
            let (other, other_normal) = key(&c.messages[..last]);
            let similarity = if other_normal == normal {
                1.0
            } else {
                token_f1(&other, &text)
            };
            (similarity > 0.0).then_some(Neighbour { index, similarity })
        })
        .collect();
    found.sort_by(|a, b| b.similarity.total_cmp(&a.similarity));
    found.truncate(k);
    found
}

fn prompt_text(messages: &[ChatMessage]) -> String {
    messages
        .iter()
        .filter(|m| m.role != "system")
        .map(|m| m.content.as_str())
        .collect::<Vec<_>>()
        .join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::data::{Conversation, Format, RowNumbering};

    fn conversation(row: usize, question: &str, answer: &str) -> Conversation {
        Conversation {
            row,
            line: row as u64,
            format: Format::Chat,
            messages: vec![
                ChatMessage::new("system", "Be brief."),
                ChatMessage::new("user", question),
                ChatMessage::new("assistant", answer),
            ],
        }
    }

    #[test]
    fn the_same_prompt_comes_first_then_word_overlap() {
        let train = Dataset {
            path: "train.jsonl".into(),
            format: Some(Format::Chat),
            numbering: RowNumbering::Line,
            conversations: vec![
                conversation(1, "How do I reset my password?", "Click reset."),
                conversation(2, "What are your opening hours?", "9 to 5."),
                conversation(3, "how do i RESET my password", "Ask support."),
                conversation(4, "Can I pay by card?", "Yes."),
            ],
        };
        let prompt = [
            ChatMessage::new("system", "Another system message."),
            ChatMessage::new("user", "How do I reset my password?!"),
        ];
        let found = nearest(&train, &prompt, 3);
        let order: Vec<usize> = found.iter().map(|n| n.index).collect();
        // "Can I pay by card?" shares only "I"; "opening hours" shares nothing and is left out.
        assert_eq!(order, [0, 2, 3], "the same prompts first, in file order");
        assert!(found[2].similarity < 0.2, "{found:?}");
        assert_eq!(found[0].similarity, 1.0);
        assert_eq!(found[1].similarity, 1.0);
        let hours = nearest(
            &train,
            &[ChatMessage::new("user", "your hours on Sunday?")],
            1,
        );
        assert_eq!(hours[0].index, 1);
        assert!(hours[0].similarity > 0.0 && hours[0].similarity < 1.0);
    }
}
