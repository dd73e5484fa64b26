//! What Loft tells people it does is what it does today. Exporting beyond saving the adapter and a
//! Metal build are not there yet, so no text a user reads may offer them: the README, the package description, the command line's help, the desktop entry,
//! the AppStream metainfo, the packaging notes, and the advice after running out of memory.

mod support;

use loft::engine::train::trainer::failure_of;
use loft::engine::train::TrainEvent;

/// Phrases (lower case) that offer something Loft does not do yet.
const NOT_YET: [&str; 3] = [
    "--features metal",
    "metal gpu support",
    "export the adapter",
];

fn assert_claims_nothing_missing(what: &str, text: &str) {
    let lower = text.to_lowercase();
    for phrase in NOT_YET {
        assert!(
            !lower.contains(phrase),
            "{what} offers `{phrase}`, which Loft does not have yet"
        );
    }
}

#[test]
fn user_facing_texts_claim_only_what_exists() {
    for file in [
        "README.md",
        "Cargo.toml",
        "packaging/loft.desktop",
        "packaging/io.github.loft.Loft.metainfo.xml",
        "packaging/README.md",
        "packaging/macos/README.md",
        "packaging/macos/bundle.sh",
    ] {
        let text = std::fs::read_to_string(support::repo_root().join(file)).unwrap();
        assert_claims_nothing_missing(file, &text);
    }
    let help = std::process::Command::new(env!("CARGO_BIN_EXE_loft"))
        .arg("--help")
        .output()
        .unwrap();
    assert!(help.status.success());
    let help = String::from_utf8(help.stdout).unwrap();
    assert!(help.contains("LoRA"), "{help}");
    assert_claims_nothing_missing("`loft --help`", &help);
}

/// QLoRA is announced where it can be chosen: the train command's help offers it, and the README
/// says how.
#[test]
fn qlora_is_offered_where_it_exists() {
    let help = std::process::Command::new(env!("CARGO_BIN_EXE_loft"))
        .args(["train", "--help"])
        .output()
        .unwrap();
    let help = String::from_utf8(help.stdout).unwrap();
    assert!(
        help.contains("--method") && help.contains("qlora"),
        "{help}"
    );
    let readme = std::fs::read_to_string(support::repo_root().join("README.md")).unwrap();
    assert!(
        readme.contains("--method qlora"),
        "the README shows how to choose QLoRA"
    );
}

/// Evaluation is announced where it exists: the command line lists `loft eval`, and the README says
/// how to compare a run with its base model.
#[test]
fn evaluation_is_offered_where_it_exists() {
    let help = std::process::Command::new(env!("CARGO_BIN_EXE_loft"))
        .arg("--help")
        .output()
        .unwrap();
    let help = String::from_utf8(help.stdout).unwrap();
    assert!(help.contains("eval "), "{help}");
    let readme = std::fs::read_to_string(support::repo_root().join("README.md")).unwrap();
    assert!(
        readme.contains("loft eval --run"),
        "the README shows how to evaluate a run"
    );
}

#[test]
fn out_of_memory_advice_names_settings_that_exist() {
    let TrainEvent::Failed { advice, .. } = failure_of("CPU out of memory: failed to allocate")
    else {
        panic!("failure_of gives a failure")
    };
    assert_claims_nothing_missing("the out-of-memory advice", &advice);
    assert!(advice.contains("gradient checkpointing"), "{advice}");
}

/// `--features metal` selected nothing (no code asked for a Metal device), so the feature is gone
/// until Metal is real.
#[test]
fn there_is_no_metal_feature() {
    let manifest: toml::Table = std::fs::read_to_string(support::repo_root().join("Cargo.toml"))
        .unwrap()
        .parse()
        .unwrap();
    let features = manifest["features"].as_table().unwrap();
    assert!(!features.contains_key("metal"), "{features:?}");
}
