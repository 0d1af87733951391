use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;

use super::*;
use crate::chain::{ChainHead, Hash32};
use crate::merkle;

fn key(id: &str) -> SigningKey {
    let doc = generate_pkcs8().unwrap();
    SigningKey::from_pkcs8(id, doc.expose()).unwrap()
}

fn fields() -> CheckpointFields {
    CheckpointFields {
        chain_id: "prod-eu".into(),
        partition: 3,
        first_seq: 1,
        seq: 10,
        head_hash: [1; 32],
        merkle_root: [2; 32],
        time_us: 1_700_000_000_000_000,
        partition_count: 0,
        tree_root: None,
    }
}

fn set_of(entries: &[PublicKeyEntry]) -> KeySet {
    let mut s = KeySet::default();
    for e in entries {
        s.add(e.clone()).unwrap();
    }
    s
}

#[test]
fn signing_input_layout_is_pinned() {
    let f = CheckpointFields {
        chain_id: "c".into(),
        partition: 2,
        first_seq: 1,
        seq: 3,
        head_hash: [0xaa; 32],
        merkle_root: [0xbb; 32],
        time_us: -1,
        partition_count: 0,
        tree_root: None,
    };
    let mut want = Vec::new();
    want.extend_from_slice(&[0, 0, 0, 19]);
    want.extend_from_slice(b"audit-checkpoint/v1");
    want.extend_from_slice(&[0, 0, 0, 1, b'c']);
    want.extend_from_slice(&[0, 0, 0, 2]);
    want.extend_from_slice(&[0, 0, 0, 0, 0, 0, 0, 1]);
    want.extend_from_slice(&[0, 0, 0, 0, 0, 0, 0, 3]);
    want.extend_from_slice(&[0xaa; 32]);
    want.extend_from_slice(&[0xbb; 32]);
    want.extend_from_slice(&[0xff; 8]);
    want.extend_from_slice(&[0, 0, 0, 2, b'k', b'1']);
    assert_eq!(f.signing_input("k1"), want);
    // Moving a byte between the two strings changes the input (length prefixes).
    let mut g = f.clone();
    g.chain_id = "ck".into();
    assert_ne!(g.signing_input("1"), f.signing_input("k1"));
}

#[test]
fn sign_and_verify_roundtrip_and_each_field_is_covered() {
    let k = key("k1");
    let keys = set_of(&[k.public_entry(0, None)]);
    let cp = sign_fields(&k, &fields()).unwrap();
    assert_eq!(verify_signed(&keys, &cp), Ok(()));

    type Mutation = Box<dyn Fn(&mut SignedCheckpoint)>;
    let mutations: Vec<Mutation> = vec![
        Box::new(|c| c.fields.chain_id.push('x')),
        Box::new(|c| c.fields.partition += 1),
        Box::new(|c| c.fields.first_seq += 1),
        Box::new(|c| c.fields.seq += 1),
        Box::new(|c| c.fields.head_hash[5] ^= 1),
        Box::new(|c| c.fields.merkle_root[31] ^= 0x80),
        Box::new(|c| c.fields.time_us += 1),
        Box::new(|c| c.signature[0] ^= 1),
    ];
    for (i, m) in mutations.iter().enumerate() {
        let mut bad = cp.clone();
        m(&mut bad);
        assert_eq!(
            verify_signed(&keys, &bad),
            Err(CheckpointError::BadSignature {
                key_id: "k1".into()
            }),
            "mutation {i}"
        );
    }
    let mut other = cp.clone();
    other.key_id = "k2".into();
    assert_eq!(
        verify_signed(&keys, &other),
        Err(CheckpointError::UnknownKey {
            key_id: "k2".into()
        })
    );
    let mut bad_range = cp.clone();
    bad_range.fields.first_seq = 11;
    assert!(matches!(
        verify_signed(&keys, &bad_range),
        Err(CheckpointError::Malformed(_))
    ));
}

#[test]
fn a_key_of_the_same_id_but_other_material_is_a_bad_signature() {
    let k = key("k1");
    let impostor = key("k1");
    let keys = set_of(&[impostor.public_entry(0, None)]);
    let cp = sign_fields(&k, &fields()).unwrap();
    assert_eq!(
        verify_signed(&keys, &cp),
        Err(CheckpointError::BadSignature {
            key_id: "k1".into()
        })
    );
}

#[test]
fn rotation_keeps_old_checkpoints_valid_and_refuses_retired_keys() {
    let t = 1_000_000;
    let old = key("k1");
    let new = key("k2");
    let mut keys = set_of(&[old.public_entry(0, None)]);
    keys.add(new.public_entry(t, None)).unwrap();
    keys.retire("k1", t).unwrap();
    let json = keys.to_json_pretty();
    let keys = KeySet::from_json(&json).unwrap();
    assert_eq!(keys.get("k1").unwrap().not_after_us, Some(t));

    let at = |time_us| CheckpointFields {
        time_us,
        ..fields()
    };
    assert_eq!(
        verify_signed(&keys, &sign_fields(&old, &at(t - 1)).unwrap()),
        Ok(())
    );
    assert_eq!(
        verify_signed(&keys, &sign_fields(&new, &at(t)).unwrap()),
        Ok(())
    );
    assert!(matches!(
        verify_signed(&keys, &sign_fields(&old, &at(t)).unwrap()),
        Err(CheckpointError::KeyNotValidAt { time_us, not_after_us: Some(end), .. })
            if time_us == t && end == t
    ));
    assert!(matches!(
        verify_signed(&keys, &sign_fields(&new, &at(t - 1)).unwrap()),
        Err(CheckpointError::KeyNotValidAt { .. })
    ));
}

#[test]
fn key_set_file_format_and_validation() {
    let json = r#"{"keys":[{"key_id":"k1","public_key":"AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=","not_before_us":5,"not_after_us":null}]}"#;
    let ks = KeySet::from_json(json).unwrap();
    assert_eq!(serde_json::to_string(&ks).unwrap(), json);
    let dup = r#"{"keys":[
            {"key_id":"k","public_key":"AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=","not_before_us":0,"not_after_us":null},
            {"key_id":"k","public_key":"AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=","not_before_us":0,"not_after_us":null}]}"#;
    assert!(KeySet::from_json(dup).is_err());
    let short =
        r#"{"keys":[{"key_id":"k","public_key":"AAAA","not_before_us":0,"not_after_us":null}]}"#;
    assert!(KeySet::from_json(short).is_err());
    let empty_window = r#"{"keys":[{"key_id":"k","public_key":"AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=","not_before_us":5,"not_after_us":5}]}"#;
    assert!(KeySet::from_json(empty_window).is_err());
}

#[test]
fn secrets_never_reach_debug_output() {
    let doc = generate_pkcs8().unwrap();
    let k = SigningKey::from_pkcs8("k1", doc.expose()).unwrap();
    let dbg = format!("{k:?} {doc:?}");
    assert!(dbg.contains("[redacted]"));
    let b64 = doc.to_base64();
    assert!(!dbg.contains(&b64));
    // The 32-byte seed sits at the end of a PKCS#8 v2 document's private key OCTET STRING;
    // no run of 8 secret bytes may appear in the output, in any common encoding.
    for w in doc.expose().windows(8).skip(16).take(32) {
        assert!(!dbg.contains(&hex::encode(w)));
    }
}

#[test]
fn keys_load_from_file_and_env_in_several_encodings() {
    let doc = generate_pkcs8().unwrap();
    let want = SigningKey::from_pkcs8("k", doc.expose())
        .unwrap()
        .public_key();
    let dir = std::env::temp_dir().join(format!("schemas-ckpt-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let der = dir.join("k.der");
    std::fs::write(&der, doc.expose()).unwrap();
    let pem = dir.join("k.pem");
    std::fs::write(
        &pem,
        format!(
            "-----BEGIN PRIVATE KEY-----\n{}\n-----END PRIVATE KEY-----\n",
            doc.to_base64()
        ),
    )
    .unwrap();
    for p in [&der, &pem] {
        assert_eq!(
            SigningKey::from_pkcs8_file("k", p).unwrap().public_key(),
            want
        );
    }
    let var = format!("SCHEMAS_TEST_CKPT_KEY_{}", std::process::id());
    std::env::set_var(&var, doc.to_base64());
    assert_eq!(SigningKey::from_env("k", &var).unwrap().public_key(), want);
    std::env::remove_var(&var);
    assert!(matches!(
        SigningKey::from_env("k", &var),
        Err(CheckpointError::InvalidKey(_))
    ));
    std::fs::write(&der, b"garbage").unwrap();
    let err = SigningKey::from_pkcs8_file("k", &der)
        .unwrap_err()
        .to_string();
    assert!(!err.contains("garbage"));
    let _ = std::fs::remove_dir_all(&dir);
}

/// (prev hash, event bytes, hash) per seq.
type Links = Vec<(Hash32, Vec<u8>, Hash32)>;

fn chain_with_checkpoint(n: usize) -> (SigningKey, KeySet, Links, SignedCheckpoint) {
    let k = key("k1");
    let keys = set_of(&[k.public_entry(0, None)]);
    let mut head = ChainHead::genesis(4);
    let links: Links = (0..n)
        .map(|i| {
            let ev = format!("event-{i}").into_bytes();
            let l = head.next(&ev);
            (l.prev_hash, ev, l.hash)
        })
        .collect();
    let hashes: Vec<Hash32> = links.iter().map(|l| l.2).collect();
    let cp = sign_fields(
        &k,
        &CheckpointFields {
            chain_id: "c".into(),
            partition: 4,
            first_seq: 1,
            seq: n as u64,
            head_hash: head.head,
            merkle_root: merkle::root(&hashes),
            time_us: 10,
            partition_count: 0,
            tree_root: None,
        },
    )
    .unwrap();
    (k, keys, links, cp)
}

#[test]
fn inclusion_proofs_check_offline_and_name_what_is_wrong() {
    let (_k, keys, links, cp) = chain_with_checkpoint(13);
    let hashes: Vec<Hash32> = links.iter().map(|l| l.2).collect();
    for seq in 1..=13u64 {
        let l = &links[seq as usize - 1];
        let ev = ProvenEvent {
            prev_hash: hex::encode(l.0),
            canonical_version: 1,
            canonical: B64.encode(&l.1),
        };
        let p = InclusionProof::build("e", seq, &hashes, &cp, Some(ev)).unwrap();
        let json = serde_json::to_string_pretty(&p).unwrap();
        let back: InclusionProof = serde_json::from_str(&json).unwrap();
        assert_eq!(check_proof(&keys, &back), Ok(()), "seq {seq}");
    }
    let good = InclusionProof::build("e", 5, &hashes, &cp, None).unwrap();
    let check = |f: &dyn Fn(&mut InclusionProof)| {
        let mut p = good.clone();
        f(&mut p);
        check_proof(&keys, &p)
    };
    assert_eq!(
        check(&|p| p.event_hash = hex::encode(hashes[5])),
        Err(ProofError::PathMismatch)
    );
    assert_eq!(
        check(&|p| p.merkle_path[1] = hex::encode([9u8; 32])),
        Err(ProofError::PathMismatch)
    );
    assert_eq!(
        check(&|p| {
            p.merkle_path.pop();
        }),
        Err(ProofError::PathMismatch)
    );
    assert_eq!(
        check(&|p| p.leaf_index = 3),
        Err(ProofError::LeafIndexMismatch {
            expected: 4,
            got: 3
        })
    );
    assert_eq!(
        check(&|p| p.tree_size = 12),
        Err(ProofError::TreeSizeMismatch {
            expected: 13,
            got: 12
        })
    );
    assert!(matches!(
        check(&|p| p.seq = 14),
        Err(ProofError::SeqOutsideCheckpoint { .. })
    ));
    assert!(matches!(
        check(&|p| p.chain_partition = 5),
        Err(ProofError::PartitionMismatch { .. })
    ));
    assert!(matches!(
        check(&|p| p.checkpoint.time_us += 1),
        Err(ProofError::Checkpoint(CheckpointError::BadSignature { .. }))
    ));
    assert!(matches!(
        check(&|p| p.checkpoint.key_id = "zz".into()),
        Err(ProofError::Checkpoint(CheckpointError::UnknownKey { .. }))
    ));
    assert!(matches!(
        check(&|p| p.event_hash = "zz".into()),
        Err(ProofError::Malformed(_))
    ));
    assert!(matches!(
        check(&|p| p.checkpoint.signature = "!!".into()),
        Err(ProofError::Checkpoint(CheckpointError::Malformed(_)))
    ));
    let wrong_event = ProvenEvent {
        prev_hash: hex::encode(links[4].0),
        canonical_version: 1,
        canonical: B64.encode(b"event-X"),
    };
    assert_eq!(
        check(&|p| p.event = Some(wrong_event.clone())),
        Err(ProofError::EventHashMismatch)
    );
    // Building refuses a range that disagrees with the checkpoint.
    let mut forged = hashes.clone();
    forged[2][0] ^= 1;
    assert_eq!(
        InclusionProof::build("e", 5, &forged, &cp, None),
        Err(ProofError::PathMismatch)
    );
}

// ---- v2: the signed partition count ------------------------------------------------------------

// The one-shot datum encoder is deprecated upstream; a test writing old-format bytes once is fine.
#[allow(deprecated)]
fn v1_single_object(cp: &schemas::Checkpoint) -> Vec<u8> {
    use apache_avro::types::Value;
    let entry = schemas::avro::catalog()
        .unwrap()
        .by_version(schemas::avro::RecordKind::Checkpoint, 1)
        .unwrap();
    let v = Value::Record(vec![
        ("chain_id".into(), Value::String(cp.chain_id.clone())),
        ("partition".into(), Value::Int(cp.partition)),
        ("first_seq".into(), Value::Long(cp.first_seq)),
        ("seq".into(), Value::Long(cp.seq)),
        ("head_hash".into(), Value::Bytes(cp.head_hash.clone())),
        ("merkle_root".into(), Value::Bytes(cp.merkle_root.clone())),
        ("time_us".into(), Value::TimestampMicros(cp.time_us)),
        ("key_id".into(), Value::String(cp.key_id.clone())),
        ("signature".into(), Value::Bytes(cp.signature.clone())),
    ]);
    let mut out = schemas::framing::SINGLE_OBJECT_MAGIC.to_vec();
    out.extend_from_slice(&entry.fingerprint.to_le_bytes());
    out.extend_from_slice(&apache_avro::to_avro_datum(&entry.schema, v).unwrap());
    out
}

#[test]
fn v1_checkpoints_still_decode_and_verify() {
    let k = key("k1");
    let mut keys = KeySet::default();
    keys.add(k.public_entry(0, None)).unwrap();
    // Signed before the field existed: v1 layout (count 0), published with schema v1.
    let old = sign(&k, &fields()).unwrap();
    assert_eq!(old.partition_count, 0);
    let bytes = v1_single_object(&old);
    let back = schemas::framing::decode_checkpoint(&bytes, None).unwrap();
    assert_eq!(back, old);
    verify(&keys, &back).unwrap();
    // The current encoder writes v2, which round-trips the count.
    let new = sign(
        &k,
        &CheckpointFields {
            partition_count: 4,
            ..fields()
        },
    )
    .unwrap();
    let enc = schemas::framing::encode_single_object_checkpoint(&new).unwrap();
    assert_ne!(enc[2..10], bytes[2..10], "v2 has its own fingerprint");
    let back = schemas::framing::decode_checkpoint(&enc, None).unwrap();
    assert_eq!(back.partition_count, 4);
    verify(&keys, &back).unwrap();
    // JSON: absent means 0 (old archive objects), present round-trips.
    let j = serde_json::to_value(CheckpointJson::from(&old)).unwrap();
    assert!(j.get("partition_count").is_none());
    let j = CheckpointJson::from(&new);
    let s: CheckpointJson = serde_json::from_str(&serde_json::to_string(&j).unwrap()).unwrap();
    assert_eq!(s.partition_count, 4);
}

#[test]
fn the_partition_count_is_signed_v2_and_cannot_be_stripped_or_changed() {
    let k = key("k1");
    let mut keys = KeySet::default();
    keys.add(k.public_entry(0, None)).unwrap();
    let f = CheckpointFields {
        partition_count: 4,
        ..fields()
    };
    let input = f.signing_input("k1");
    let mut want = Vec::new();
    want.extend_from_slice(&19u32.to_be_bytes());
    want.extend_from_slice(b"audit-checkpoint/v2");
    assert!(input.starts_with(&want));
    // time_us is followed by the count, then the key id.
    let tail = [&4u32.to_be_bytes()[..], &2u32.to_be_bytes()[..], b"k1"].concat();
    assert!(input.ends_with(&tail));
    let cp = sign(&k, &f).unwrap();
    verify(&keys, &cp).unwrap();
    for n in [0, 5, 7] {
        let forged = schemas::Checkpoint {
            partition_count: n,
            ..cp.clone()
        };
        assert!(
            matches!(
                verify(&keys, &forged),
                Err(CheckpointError::BadSignature { .. })
            ),
            "count {n}"
        );
    }
    // A partition outside its own signed set is malformed, not signed.
    let bad = CheckpointFields { partition: 4, ..f };
    assert!(sign(&k, &bad).is_err());
}

#[test]
fn a_genesis_checkpoint_signs_an_empty_partition_and_nothing_else_has_size_zero() {
    let k = key("k1");
    let keys = set_of(&[k.public_entry(0, None)]);
    let g = CheckpointFields::genesis("audit", 3, 1_700_000_000_000_000, 4);
    assert!(g.is_genesis());
    assert_eq!(g.tree_size(), 0);
    assert_eq!(fields().tree_size(), fields().seq - fields().first_seq + 1);
    let cp = sign_fields(&k, &g).expect("a genesis checkpoint signs");
    assert_eq!(verify_signed(&keys, &cp), Ok(()));
    // Through the record form and back, as the sinks store it.
    let rec = schemas::Checkpoint::from(&cp);
    let back = SignedCheckpoint::try_from(&rec).expect("decodes");
    assert_eq!(verify_signed(&keys, &back), Ok(()));

    // Size 0 is only ever the genesis: another head, root or start is malformed, signed or not.
    type Mutation = Box<dyn Fn(&mut CheckpointFields)>;
    let mutations: Vec<Mutation> = vec![
        Box::new(|f| f.head_hash[0] = 1),
        Box::new(|f| f.merkle_root = [0; 32]),
        Box::new(|f| f.first_seq = 0),
        Box::new(|f| f.first_seq = 2),
    ];
    for (i, m) in mutations.iter().enumerate() {
        let mut bad = g.clone();
        m(&mut bad);
        assert!(
            matches!(sign_fields(&k, &bad), Err(CheckpointError::Malformed(_))),
            "mutation {i} signed"
        );
        let mut forged = cp.clone();
        m(&mut forged.fields);
        assert!(
            matches!(
                verify_signed(&keys, &forged),
                Err(CheckpointError::Malformed(_))
            ),
            "mutation {i} verified"
        );
    }
}

/// v3: the signing input is a C2SP tlog-checkpoint note body (pinned here byte for byte), the
/// checkpoint renders as a signed note that the independent note/checkpoint code of the
/// `integrity` crate opens with the log's vkey, and the whole-tree root can be neither
/// stripped (downgrade to v2), changed, nor moved to another partition's origin.
#[test]
fn v3_checkpoints_are_c2sp_signed_notes_of_the_whole_tree() {
    let mut f = fields();
    f.partition_count = 8;
    f.tree_root = Some([3; 32]);
    let want = format!(
        "prod-eu/partition/3\n10\n{}\naudit-checkpoint/v3 1 {} {} 1700000000000000 8 k1\n",
        B64.encode([3u8; 32]),
        B64.encode([1u8; 32]),
        B64.encode([2u8; 32])
    );
    assert_eq!(f.signing_input("k1"), want.as_bytes());

    let k = key("k1");
    let keys = set_of(&[k.public_entry(0, None)]);
    let cp = sign_fields(&k, &f).unwrap();
    verify_signed(&keys, &cp).unwrap();
    // Through the Avro record and the JSON document form and back.
    let rec = schemas::Checkpoint::from(&cp);
    assert_eq!(rec.tree_root, vec![3; 32]);
    verify(&keys, &rec).unwrap();
    let json = CheckpointJson::from(&rec);
    assert_eq!(SignedCheckpoint::try_from(&json).unwrap(), cp);

    // The note, opened by integrity's C2SP code with the vkey derived from the public key.
    let note = cp.to_note(k.public_key()).unwrap();
    let origin = "prod-eu/partition/3";
    let vkey = crate::tlog::log_key(origin, k.public_key()).unwrap();
    let opened =
        crate::tlog::Checkpoint::open(note.as_bytes(), origin, std::slice::from_ref(&vkey))
            .unwrap();
    assert_eq!(opened.checkpoint.size(), 10);
    assert_eq!(opened.checkpoint.root(), &[3; 32]);
    // Another partition's origin does not accept it.
    let other = crate::tlog::log_key("prod-eu/partition/4", k.public_key()).unwrap();
    assert!(
        crate::tlog::Checkpoint::open(note.as_bytes(), "prod-eu/partition/4", &[other]).is_err()
    );
    // An edited note body fails.
    let edited = note.replacen("\n10\n", "\n11\n", 1);
    assert!(crate::tlog::Checkpoint::open(edited.as_bytes(), origin, &[vkey]).is_err());

    // Stripping the tree root (a v2 reading of the same fields) or changing it fails.
    let mut stripped = cp.clone();
    stripped.fields.tree_root = None;
    assert!(matches!(
        verify_signed(&keys, &stripped),
        Err(CheckpointError::BadSignature { .. })
    ));
    let mut changed = cp.clone();
    changed.fields.tree_root = Some([4; 32]);
    assert!(matches!(
        verify_signed(&keys, &changed),
        Err(CheckpointError::BadSignature { .. })
    ));
    // A range-only checkpoint has no note form.
    assert!(sign_fields(&k, &fields())
        .unwrap()
        .to_note(k.public_key())
        .is_none());
}

#[test]
fn v3_refuses_names_that_would_blur_the_note_and_a_genesis_with_a_non_empty_tree() {
    let k = key("k1");
    let mut f = fields();
    f.tree_root = Some([3; 32]);
    f.chain_id = "prod eu".into();
    assert!(matches!(
        sign_fields(&k, &f),
        Err(CheckpointError::Malformed(_))
    ));
    f.chain_id = "prod+eu".into();
    assert!(matches!(
        sign_fields(&k, &f),
        Err(CheckpointError::Malformed(_))
    ));
    let spaced = SigningKey::from_pkcs8("k 1", generate_pkcs8().unwrap().expose()).unwrap();
    f.chain_id = "prod-eu".into();
    assert!(matches!(
        sign_fields(&spaced, &f),
        Err(CheckpointError::Malformed(_))
    ));

    let mut g = CheckpointFields::genesis("prod-eu", 0, 5, 2);
    assert_eq!(g.tree_root, Some(merkle::empty_root()));
    let cp = sign_fields(&k, &g).unwrap();
    verify_signed(&set_of(&[k.public_entry(0, None)]), &cp).unwrap();
    let note = cp.to_note(k.public_key()).unwrap();
    assert!(
        note.starts_with("prod-eu/partition/0\n0\n47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU=\n")
    );
    g.tree_root = Some([9; 32]);
    assert!(matches!(
        sign_fields(&k, &g),
        Err(CheckpointError::Malformed(_))
    ));
}
