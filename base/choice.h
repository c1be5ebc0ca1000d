// Config choices as enums. A key such as train.precision is parsed once into an enum; code
// compares enumerators, never strings. Each enum lists its YAML spellings, in enumerator order,
// in a ChoiceNames specialisation next to its definition:
//
//   enum class Position { rope, alibi };
//   template <> struct ChoiceNames<Position> { static constexpr const char* names[] = {"rope", "alibi"}; };
//
// name_of(Position::alibi) == "alibi"; parse_choice("alibi", &p) sets p; `os << p` prints "alibi".
#pragma once
#include <cstddef>
#include <iterator>
#include <ostream>
#include <string>
#include <type_traits>
#include <vector>

namespace kiln {

template <class E>
struct ChoiceNames;  // names[]: the spelling of each enumerator, in order

template <class E, class = void>
struct is_choice : std::false_type {};
template <class E>
struct is_choice<E, std::void_t<decltype(ChoiceNames<E>::names)>> : std::true_type {};

template <class E>
const char* name_of(E e) {
  static_assert(is_choice<E>::value, "name_of: no ChoiceNames for this enum");
  return ChoiceNames<E>::names[static_cast<size_t>(e)];
}

// Every spelling of E, in order (for "valid: a | b" messages and --explain).
template <class E>
std::vector<std::string> choice_names() {
  return {std::begin(ChoiceNames<E>::names), std::end(ChoiceNames<E>::names)};
}

// Sets *out and returns true when `s` spells one of E's enumerators.
template <class E>
bool parse_choice(const std::string& s, E* out) {
  const size_t n = std::size(ChoiceNames<E>::names);
  for (size_t i = 0; i < n; ++i)
    if (s == ChoiceNames<E>::names[i]) {
      *out = static_cast<E>(i);
      return true;
    }
  return false;
}

template <class E, class = std::enable_if_t<is_choice<E>::value>>
std::ostream& operator<<(std::ostream& os, E e) {
  return os << name_of(e);
}

}  // namespace kiln
