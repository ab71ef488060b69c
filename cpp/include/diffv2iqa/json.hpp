// A small strict JSON reader (RFC 8259) for bundle manifests; header-only, C++17, no dependencies.
//
// Accepts exactly what the Python loader (diffv2iqa_trt.bundle.store.read_manifest) accepts and refuses the rest:
// UTF-8 text only, no NaN/Infinity, no number outside the double range (1e400), no unpaired surrogate escape and no
// U+0000 in a string, no duplicate object keys (readers disagree on which one wins), no trailing
// garbage, at most `max_bytes` bytes, `max_values` values and `max_depth` levels (the outermost value is level 1).
// Numbers are kept as double, and additionally as an exact int64 when written without fraction or exponent and in
// range, and as an exact uint64 when such an integer is non-negative and at most 2**64-1 (noise seeds go that high). Errors are json::ParseError, a std::runtime_error whose message and `offset()` give the byte offset.
#pragma once

#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <stdexcept>
#include <string>
#include <unordered_set>
#include <utility>
#include <vector>

namespace diffv2iqa {
namespace json {

constexpr std::size_t kMaxBytes = std::size_t{4} << 20;  // MAX_MANIFEST_BYTES
constexpr std::size_t kMaxDepth = 32;                     // MAX_MANIFEST_DEPTH
constexpr std::size_t kMaxValues = 200000;                // MAX_MANIFEST_VALUES

class ParseError : public std::runtime_error {
 public:
  ParseError(std::size_t offset, const std::string& what)
      : std::runtime_error("invalid JSON at byte " + std::to_string(offset) + ": " + what), offset_(offset) {}
  std::size_t offset() const noexcept { return offset_; }

 private:
  std::size_t offset_;
};

enum class Type { Null, Bool, Number, String, Array, Object };

inline const char* type_name(Type t) {
  switch (t) {
    case Type::Null: return "null";
    case Type::Bool: return "a boolean";
    case Type::Number: return "a number";
    case Type::String: return "a string";
    case Type::Array: return "an array";
    case Type::Object: return "an object";
  }
  return "?";
}

class Value {
 public:
  Type type = Type::Null;
  bool boolean = false;
  double number = 0.0;
  bool integral = false;  // number was written as an integer that fits int64: `integer` holds it exactly
  std::int64_t integer = 0;
  bool unsigned_integral = false;  // number was written as an integer in [0, 2**64-1]: `uinteger` holds it exactly
  std::uint64_t uinteger = 0;
  std::string string;
  std::vector<Value> items;       // Array elements
  std::vector<std::string> keys;  // Object keys, in document order
  std::vector<Value> values;      // Object values, parallel to keys

  bool is_null() const { return type == Type::Null; }
  bool is_bool() const { return type == Type::Bool; }
  bool is_number() const { return type == Type::Number; }
  bool is_string() const { return type == Type::String; }
  bool is_array() const { return type == Type::Array; }
  bool is_object() const { return type == Type::Object; }

  // Object member, or nullptr when absent (or when this is not an object).
  const Value* find(const std::string& key) const {
    if (type != Type::Object) return nullptr;
    for (std::size_t i = 0; i < keys.size(); ++i)
      if (keys[i] == key) return &values[i];
    return nullptr;
  }
};

namespace detail {

class Parser {
 public:
  Parser(const char* data, std::size_t size, std::size_t max_depth, std::size_t max_values)
      : p_(data), n_(size), max_depth_(max_depth), max_values_(max_values) {}

  Value parse_document() {
    check_utf8();
    skip_ws();
    Value v;
    parse_value(v, 1);
    skip_ws();
    if (i_ != n_) fail("unexpected data after the JSON value");
    return v;
  }

 private:
  const char* p_;
  std::size_t n_;
  std::size_t i_ = 0;
  std::size_t max_depth_;
  std::size_t max_values_;
  std::size_t count_ = 0;

  [[noreturn]] void fail(const std::string& what) const { throw ParseError(i_, what); }
  [[noreturn]] void fail_at(std::size_t at, const std::string& what) const { throw ParseError(at, what); }

  unsigned char byte(std::size_t k) const { return static_cast<unsigned char>(p_[k]); }

  // Strict UTF-8 (no overlong forms, no surrogates, at most U+10FFFF), as Python's bytes.decode("utf-8").
  void check_utf8() const {
    std::size_t k = 0;
    while (k < n_) {
      unsigned char c = byte(k);
      if (c < 0x80) { ++k; continue; }
      int len;
      std::uint32_t cp;
      if (c >= 0xC2 && c <= 0xDF) { len = 2; cp = c & 0x1Fu; }
      else if (c >= 0xE0 && c <= 0xEF) { len = 3; cp = c & 0x0Fu; }
      else if (c >= 0xF0 && c <= 0xF4) { len = 4; cp = c & 0x07u; }
      else fail_at(k, "the text is not UTF-8");
      if (k + static_cast<std::size_t>(len) > n_) fail_at(k, "the text is not UTF-8 (truncated sequence)");
      for (int j = 1; j < len; ++j) {
        unsigned char d = byte(k + static_cast<std::size_t>(j));
        if ((d & 0xC0u) != 0x80u) fail_at(k, "the text is not UTF-8");
        cp = (cp << 6) | (d & 0x3Fu);
      }
      if ((len == 3 && cp < 0x800) || (len == 4 && (cp < 0x10000 || cp > 0x10FFFF)) ||
          (cp >= 0xD800 && cp <= 0xDFFF))
        fail_at(k, "the text is not UTF-8");
      k += static_cast<std::size_t>(len);
    }
  }

  void skip_ws() {
    while (i_ < n_) {
      char c = p_[i_];
      if (c == ' ' || c == '\t' || c == '\n' || c == '\r') ++i_;
      else break;
    }
  }

  void expect_word(const char* word) {
    std::size_t len = std::strlen(word);
    if (n_ - i_ < len || std::memcmp(p_ + i_, word, len) != 0) fail("unexpected character");
    i_ += len;
  }

  void parse_value(Value& v, std::size_t depth) {
    if (depth > max_depth_) fail("nested more than " + std::to_string(max_depth_) + " deep");
    if (++count_ > max_values_) fail("more than " + std::to_string(max_values_) + " values");
    if (i_ >= n_) fail("unexpected end of the text, a value was expected");
    char c = p_[i_];
    switch (c) {
      case '{': parse_object(v, depth); return;
      case '[': parse_array(v, depth); return;
      case '"': v.type = Type::String; parse_string(v.string); return;
      case 't': expect_word("true"); v.type = Type::Bool; v.boolean = true; return;
      case 'f': expect_word("false"); v.type = Type::Bool; v.boolean = false; return;
      case 'n': expect_word("null"); v.type = Type::Null; return;
      default:
        if (c == '-' || (c >= '0' && c <= '9')) { parse_number(v); return; }
        if (c == 'N' || c == 'I') fail("NaN and Infinity are not valid JSON");
        fail("unexpected character, a value was expected");
    }
  }

  void parse_object(Value& v, std::size_t depth) {
    v.type = Type::Object;
    ++i_;  // '{'
    skip_ws();
    if (i_ < n_ && p_[i_] == '}') { ++i_; return; }
    std::unordered_set<std::string> seen;
    for (;;) {
      skip_ws();
      if (i_ >= n_ || p_[i_] != '"') fail("an object key (a string) was expected");
      std::size_t key_at = i_;
      std::string key;
      parse_string(key);
      if (!seen.insert(key).second) fail_at(key_at, "duplicate key \"" + key + "\"");
      skip_ws();
      if (i_ >= n_ || p_[i_] != ':') fail("':' was expected after an object key");
      ++i_;
      skip_ws();
      v.keys.push_back(std::move(key));
      v.values.emplace_back();
      parse_value(v.values.back(), depth + 1);
      skip_ws();
      if (i_ < n_ && p_[i_] == ',') { ++i_; continue; }
      if (i_ < n_ && p_[i_] == '}') { ++i_; return; }
      fail("',' or '}' was expected in an object");
    }
  }

  void parse_array(Value& v, std::size_t depth) {
    v.type = Type::Array;
    ++i_;  // '['
    skip_ws();
    if (i_ < n_ && p_[i_] == ']') { ++i_; return; }
    for (;;) {
      skip_ws();
      v.items.emplace_back();
      parse_value(v.items.back(), depth + 1);
      skip_ws();
      if (i_ < n_ && p_[i_] == ',') { ++i_; continue; }
      if (i_ < n_ && p_[i_] == ']') { ++i_; return; }
      fail("',' or ']' was expected in an array");
    }
  }

  unsigned hex4() {
    if (n_ - i_ < 4) fail("incomplete \\u escape");
    unsigned u = 0;
    for (int k = 0; k < 4; ++k) {
      char c = p_[i_ + static_cast<std::size_t>(k)];
      unsigned d;
      if (c >= '0' && c <= '9') d = static_cast<unsigned>(c - '0');
      else if (c >= 'a' && c <= 'f') d = static_cast<unsigned>(c - 'a' + 10);
      else if (c >= 'A' && c <= 'F') d = static_cast<unsigned>(c - 'A' + 10);
      else fail("invalid \\u escape");
      u = (u << 4) | d;
    }
    i_ += 4;
    return u;
  }

  static void put_utf8(std::string& out, std::uint32_t cp) {
    if (cp < 0x80) {
      out += static_cast<char>(cp);
    } else if (cp < 0x800) {
      out += static_cast<char>(0xC0 | (cp >> 6));
      out += static_cast<char>(0x80 | (cp & 0x3F));
    } else if (cp < 0x10000) {
      out += static_cast<char>(0xE0 | (cp >> 12));
      out += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
      out += static_cast<char>(0x80 | (cp & 0x3F));
    } else {
      out += static_cast<char>(0xF0 | (cp >> 18));
      out += static_cast<char>(0x80 | ((cp >> 12) & 0x3F));
      out += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
      out += static_cast<char>(0x80 | (cp & 0x3F));
    }
  }

  void parse_string(std::string& out) {
    ++i_;  // opening quote
    for (;;) {
      if (i_ >= n_) fail("unterminated string");
      unsigned char c = byte(i_);
      if (c == '"') { ++i_; return; }
      if (c < 0x20) fail("control character in a string (it must be escaped)");
      if (c != '\\') { out += static_cast<char>(c); ++i_; continue; }
      std::size_t esc_at = i_;
      ++i_;
      if (i_ >= n_) fail("unterminated string");
      char e = p_[i_++];
      switch (e) {
        case '"': out += '"'; break;
        case '\\': out += '\\'; break;
        case '/': out += '/'; break;
        case 'b': out += '\b'; break;
        case 'f': out += '\f'; break;
        case 'n': out += '\n'; break;
        case 'r': out += '\r'; break;
        case 't': out += '\t'; break;
        case 'u': {
          std::uint32_t cp = hex4();
          // U+0000 is refused: C string APIs (open, the ONNX Runtime C API) end a name there, so "a.onnx\u0000x"
          // would name another file than the manifest lists (docs/bundle.md, "JSON").
          if (cp == 0) fail_at(esc_at, "U+0000 (NUL) in a string");
          if (cp >= 0xDC00 && cp <= 0xDFFF) fail_at(esc_at, "unpaired low surrogate in a \\u escape");
          if (cp >= 0xD800 && cp <= 0xDBFF) {
            if (n_ - i_ < 6 || p_[i_] != '\\' || p_[i_ + 1] != 'u')
              fail_at(esc_at, "unpaired high surrogate in a \\u escape");
            i_ += 2;
            std::uint32_t lo = hex4();
            if (lo < 0xDC00 || lo > 0xDFFF) fail_at(esc_at, "unpaired high surrogate in a \\u escape");
            cp = 0x10000 + ((cp - 0xD800) << 10) + (lo - 0xDC00);
          }
          put_utf8(out, cp);
          break;
        }
        default: fail_at(esc_at, "invalid escape in a string");
      }
    }
  }

  void parse_number(Value& v) {
    std::size_t start = i_;
    bool negative = false;
    if (p_[i_] == '-') { negative = true; ++i_; }
    if (i_ >= n_) fail("incomplete number");
    if (p_[i_] == 'I') fail("NaN and Infinity are not valid JSON");
    if (p_[i_] == '0') {
      ++i_;
      if (i_ < n_ && p_[i_] >= '0' && p_[i_] <= '9') fail("leading zero in a number");
    } else if (p_[i_] >= '1' && p_[i_] <= '9') {
      while (i_ < n_ && p_[i_] >= '0' && p_[i_] <= '9') ++i_;
    } else {
      fail("a digit was expected in a number");
    }
    bool is_int = true;
    if (i_ < n_ && p_[i_] == '.') {
      is_int = false;
      ++i_;
      if (i_ >= n_ || p_[i_] < '0' || p_[i_] > '9') fail("a digit was expected after the decimal point");
      while (i_ < n_ && p_[i_] >= '0' && p_[i_] <= '9') ++i_;
    }
    if (i_ < n_ && (p_[i_] == 'e' || p_[i_] == 'E')) {
      is_int = false;
      ++i_;
      if (i_ < n_ && (p_[i_] == '+' || p_[i_] == '-')) ++i_;
      if (i_ >= n_ || p_[i_] < '0' || p_[i_] > '9') fail("a digit was expected in the exponent");
      while (i_ < n_ && p_[i_] >= '0' && p_[i_] <= '9') ++i_;
    }
    std::string text(p_ + start, i_ - start);
    v.type = Type::Number;
    // strtod follows the C locale's decimal point; programs that call setlocale must keep LC_NUMERIC "C".
    v.number = std::strtod(text.c_str(), nullptr);
    if (!std::isfinite(v.number)) fail_at(start, "number " + text.substr(0, 40) + " is out of the double range");
    if (is_int) {
      // Exact value by digits: int64 when it fits, and uint64 for non-negative integers up to 2**64-1.
      const std::uint64_t max = ~std::uint64_t{0};
      std::uint64_t acc = 0;
      bool fits = true;
      for (std::size_t k = negative ? 1 : 0; k < text.size(); ++k) {
        std::uint64_t d = static_cast<std::uint64_t>(text[k] - '0');
        if (acc > (max - d) / 10) { fits = false; break; }
        acc = acc * 10 + d;
      }
      if (fits && !negative) {
        v.unsigned_integral = true;
        v.uinteger = acc;
        if (acc <= std::uint64_t{9223372036854775807ULL}) {
          v.integral = true;
          v.integer = static_cast<std::int64_t>(acc);
        }
      } else if (fits && acc <= std::uint64_t{9223372036854775808ULL}) {
        v.integral = true;
        v.integer = acc == std::uint64_t{9223372036854775808ULL} ? INT64_MIN : -static_cast<std::int64_t>(acc);
      }
    }
  }
};

}  // namespace detail

// Parse a whole document. Throws ParseError (with the byte offset) on anything that is not strict JSON or exceeds
// the limits.
inline Value parse(const std::string& text, std::size_t max_bytes = kMaxBytes, std::size_t max_depth = kMaxDepth,
                   std::size_t max_values = kMaxValues) {
  if (text.size() > max_bytes)
    throw ParseError(max_bytes, "the document is larger than " + std::to_string(max_bytes) + " bytes");
  detail::Parser parser(text.data(), text.size(), max_depth, max_values);
  return parser.parse_document();
}

// `s` as a JSON string literal (the writing side, for the tools' output): quote and backslash escaped, other
// control characters as \u00XX; other bytes are copied (the manifest's strings are UTF-8 already).
inline std::string quote(const std::string& s) {
  std::string out = "\"";
  for (unsigned char c : s) {
    if (c == '"' || c == '\\') {
      out += '\\';
      out += static_cast<char>(c);
    } else if (c < 0x20) {
      char buf[8];
      std::snprintf(buf, sizeof buf, "\\u%04x", c);
      out += buf;
    } else {
      out += static_cast<char>(c);
    }
  }
  return out + "\"";
}

}  // namespace json
}  // namespace diffv2iqa
