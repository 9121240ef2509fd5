//! The Redis scripts' replies as the store decodes them (src/store/redis.rs): the load
//! reply (`redis/load.lua`: one bulk string), the state a write sent for the cache
//! returns (`redis/apply.lua`) and the take reply of a move on a cluster.
//!
//! Input: text (first byte < 0x80) is a load reply's bytes, also tried as RESP; other
//! inputs build replies from a model (as load.lua writes them, then mutated), reply trees
//! or raw bytes with `arbitrary`.
//!
//! Properties:
//! - no panic, whatever the reply: raw bytes as a bulk string, RESP bytes through the
//!   client library's parser, or a reply tree built from the input;
//! - a reply of the wrong type is an error (load: anything but a bulk string; take:
//!   anything but an array);
//! - a load reply written from a model exactly as load.lua writes it decodes to that
//!   model (data, flash, max_age, remaining, owner, the bound check via `index_due`);
//!   so does a written state as apply.lua returns it (data, max_age, remaining, owner);
//! - whatever decodes holds only what the writers can produce: quoted printable fields,
//!   non-empty printable values, a quoted printable owner, an index refresh only for an
//!   owned session.
#![no_main]

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use session_sidecar::{
    fuzz_api::{RedisValue, parse_resp, redis_load_reply, redis_take_reply, redis_written_reply},
    protocol::{field_literal, json_ascii},
    store::{FieldMap, LoadedSession, Owner, owners::index_due, pairs::encode_pairs},
};
use sidecar_fuzz::{Json, Mode, Style, mode, printable};

#[derive(Arbitrary, Debug)]
enum Input {
    Raw(Vec<u8>),
    Resp(Vec<u8>),
    Built(Val),
    Load(Model, Option<(u16, u8)>),
    Take(Vec<u8>, Pairs, Pairs),
    Written(Written, Option<(u8, u8, u8)>),
}

/// A write's state as apply.lua returns it for the cache.
#[derive(Arbitrary, Debug)]
struct Written {
    max_age: Option<u64>,
    remaining_ms: u64,
    ttl_ms: u64,
    owner: Option<String>,
    data: Pairs,
}

impl Written {
    fn reply(&self) -> (Vec<Vec<u8>>, LoadedSession) {
        let data = self.data.map();
        let mut data_bytes = Vec::new();
        encode_pairs(&data, &mut data_bytes);
        let owner = self.owner.as_deref().map(field_literal);
        let header = format!(
            "{} {} {}",
            self.max_age.map_or_else(|| "-".to_owned(), |n| n.to_string()),
            self.remaining_ms,
            self.ttl_ms
        );
        let items = vec![
            b"OK".to_vec(),
            header.into_bytes(),
            owner.clone().unwrap_or_default().into_bytes(),
            data_bytes,
        ];
        let loaded = LoadedSession {
            data,
            flash: FieldMap::new(),
            max_age: self.max_age,
            remaining: self.remaining_ms / 1000,
            revision: None,
            index_due: None,
            owner: owner.map(Owner::from_literal),
        };
        (items, loaded)
    }
}

fn bulk_array(items: Vec<Vec<u8>>) -> RedisValue {
    RedisValue::Array(items.into_iter().map(RedisValue::BulkString).collect())
}

#[derive(Arbitrary, Debug)]
enum Val {
    Nil,
    Int(i64),
    Bulk(Vec<u8>),
    Simple(String),
    Okay,
    Double(f64),
    Boolean(bool),
    Array(Vec<Val>),
    Set(Vec<Val>),
    Map(Vec<(Val, Val)>),
}

impl Val {
    fn value(&self) -> RedisValue {
        match self {
            Val::Nil => RedisValue::Nil,
            Val::Int(n) => RedisValue::Int(*n),
            Val::Bulk(b) => RedisValue::BulkString(b.clone()),
            Val::Simple(s) => RedisValue::SimpleString(s.clone()),
            Val::Okay => RedisValue::Okay,
            Val::Double(d) => RedisValue::Double(*d),
            Val::Boolean(b) => RedisValue::Boolean(*b),
            Val::Array(items) => RedisValue::Array(items.iter().map(Val::value).collect()),
            Val::Set(items) => RedisValue::Set(items.iter().map(Val::value).collect()),
            Val::Map(items) => {
                RedisValue::Map(items.iter().map(|(k, v)| (k.value(), v.value())).collect())
            }
        }
    }
}

#[derive(Arbitrary, Debug)]
struct Pairs(Vec<(String, Json, Style)>);

impl Pairs {
    fn map(&self) -> FieldMap {
        self.0
            .iter()
            .filter_map(|(k, j, style)| {
                let v: serde_json::Value = serde_json::from_str(&j.text(*style)).ok()?;
                Some((field_literal(k), json_ascii(&v)))
            })
            .collect()
    }
}

#[derive(Arbitrary, Debug)]
struct Model {
    max_age: Option<u64>,
    remaining: u64,
    owner: Option<(String, Option<[u64; 4]>)>,
    data: Pairs,
    flash: Pairs,
}

impl Model {
    /// The reply as load.lua writes it, and what it means.
    fn reply(&self) -> (Vec<u8>, LoadedSession) {
        let data = self.data.map();
        let flash = self.flash.map();
        let mut data_bytes = Vec::new();
        encode_pairs(&data, &mut data_bytes);
        let owner = self
            .owner
            .as_ref()
            .map(|(o, check)| (field_literal(o), *check));
        let num = |n: Option<u64>| n.map_or_else(|| "-".to_owned(), |n| n.to_string());
        let check = owner
            .as_ref()
            .and_then(|(_, c)| *c)
            .map_or_else(|| "-".to_owned(), |c| c.map(|n| n.to_string()).join(","));
        let mut out = format!(
            "F {} {} {} {} {check}\n",
            num(self.max_age),
            self.remaining,
            data_bytes.len(),
            num(owner.as_ref().map(|(o, _)| o.len() as u64)),
        )
        .into_bytes();
        if let Some((o, _)) = &owner {
            out.extend_from_slice(o.as_bytes());
        }
        out.extend_from_slice(&data_bytes);
        encode_pairs(&flash, &mut out);
        let loaded = LoadedSession {
            data,
            flash,
            max_age: self.max_age,
            remaining: self.remaining,
            revision: None,
            index_due: owner
                .as_ref()
                .and_then(|(_, c)| *c)
                .and_then(|[now, idle, bound, deadline]| index_due(now, idle, bound, deadline)),
            owner: owner.map(|(o, _)| Owner::from_literal(o)),
        };
        (out, loaded)
    }
}

fn check_map(map: &FieldMap) {
    for (f, v) in map {
        assert!(
            f.len() >= 2 && f.starts_with('"') && f.ends_with('"'),
            "field {f:?}"
        );
        assert!(!v.is_empty(), "empty value");
        assert!(printable(f) && printable(v), "not printable: {f:?}: {v:?}");
    }
}

fn check_loaded(s: &LoadedSession) {
    check_map(&s.data);
    check_map(&s.flash);
    if let Some(o) = &s.owner {
        let o = o.literal();
        assert!(
            o.len() >= 2 && o.starts_with('"') && o.ends_with('"'),
            "owner"
        );
        assert!(printable(o), "owner not printable: {o:?}");
    }
    assert!(
        s.index_due.is_none() || s.owner.is_some(),
        "index refresh without owner"
    );
    assert!(s.revision.is_none());
}

fn load(v: RedisValue) {
    let is_bulk = matches!(v, RedisValue::BulkString(_));
    match redis_load_reply(v) {
        Ok(Some(s)) => {
            assert!(is_bulk);
            check_loaded(&s);
        }
        Ok(None) => assert!(is_bulk),
        Err(_) => {}
    }
}

fn written(v: RedisValue) {
    let is_array = matches!(v, RedisValue::Array(_));
    match redis_written_reply(v) {
        Ok(Some(s)) => {
            assert!(is_array);
            check_loaded(&s);
            assert!(s.flash.is_empty() && s.index_due.is_none());
        }
        Ok(None) => assert!(is_array),
        Err(_) => {}
    }
}

fn take(v: RedisValue) {
    let is_array = matches!(v, RedisValue::Array(_));
    match redis_take_reply(v) {
        Ok(Some((_meta, data, flash))) => {
            assert!(is_array);
            check_map(&data);
            check_map(&flash);
        }
        Ok(None) => assert!(is_array),
        Err(_) => {}
    }
}

fn check(input: Input) {
    match input {
        Input::Raw(bytes) => {
            load(RedisValue::BulkString(bytes.clone()));
            written(bulk_array(vec![
                b"OK".to_vec(),
                b"- 1000 1000".to_vec(),
                Vec::new(),
                bytes.clone(),
            ]));
            take(RedisValue::Array(vec![
                RedisValue::BulkString(b"TAKEN".to_vec()),
                RedisValue::BulkString(Vec::new()),
                RedisValue::BulkString(bytes.clone()),
                RedisValue::BulkString(bytes),
            ]));
        }
        Input::Resp(bytes) => {
            if let Ok(v) = parse_resp(&bytes) {
                load(v.clone());
                written(v.clone());
                take(v);
            }
        }
        Input::Built(val) => {
            load(val.value());
            written(val.value());
            take(val.value());
        }
        Input::Load(model, mutation) => {
            let (mut bytes, want) = model.reply();
            let got = redis_load_reply(RedisValue::BulkString(bytes.clone()));
            assert_eq!(got.as_ref().ok(), Some(&Some(want.clone())), "{got:?}");
            if let Some((at, x)) = mutation
                && !bytes.is_empty()
            {
                let i = usize::from(at) % bytes.len();
                bytes[i] ^= x;
                load(RedisValue::BulkString(bytes));
            }
        }
        Input::Written(model, mutation) => {
            let (mut items, want) = model.reply();
            let got = redis_written_reply(bulk_array(items.clone()));
            assert_eq!(got.as_ref().ok(), Some(&Some(want)), "{got:?}");
            if let Some((which, at, x)) = mutation {
                let item = &mut items[usize::from(which) % 4];
                if !item.is_empty() {
                    let i = usize::from(at) % item.len();
                    item[i] ^= x;
                }
                written(bulk_array(items));
            }
        }
        Input::Take(meta, data, flash) => {
            let (data, flash) = (data.map(), flash.map());
            let mut d = Vec::new();
            encode_pairs(&data, &mut d);
            let mut f = Vec::new();
            encode_pairs(&flash, &mut f);
            let reply = RedisValue::Array(vec![
                RedisValue::SimpleString("TAKEN".to_owned()),
                RedisValue::BulkString(meta.clone()),
                RedisValue::BulkString(d),
                RedisValue::BulkString(f),
            ]);
            assert_eq!(
                redis_take_reply(reply).ok(),
                Some(Some((meta, data, flash)))
            );
        }
    }
}

fuzz_target!(|data: &[u8]| match mode(data) {
    // Text: a load reply (the bulk string's bytes), also tried as RESP.
    Mode::Text(t) => {
        check(Input::Raw(t.to_vec()));
        check(Input::Resp(t.to_vec()));
    }
    Mode::Structured(u) => {
        if let Ok(input) = Input::arbitrary_take_rest(u) {
            check(input);
        }
    }
});
