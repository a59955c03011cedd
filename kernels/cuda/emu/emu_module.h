// The emulator's view of one compiled kernel file: a table of its entry points, each with a
// trampoline that unpacks a cuLaunchKernel-style parameter array (one pointer per argument)
// into the kernel's typed parameters, and the parameter kinds, so a launch whose arguments do
// not match the kernel's signature in number, type or constness is refused before it runs.
//
// Included after common.cuh and the kernel file (the element types live in common.cuh).

#pragma once

#include "emu_abi.h"

namespace emu {

template <typename T>
struct ElemOf {
    static_assert(sizeof(T) == 0, "a kernel pointer parameter of a type the emulator does not know");
};
template <> struct ElemOf<float> { static constexpr uint8_t value = ELEM_F32; };
template <> struct ElemOf<bf16> { static constexpr uint8_t value = ELEM_BF16; };
template <> struct ElemOf<f16> { static constexpr uint8_t value = ELEM_F16; };
template <> struct ElemOf<int> { static constexpr uint8_t value = ELEM_I32; };
template <> struct ElemOf<long long> { static constexpr uint8_t value = ELEM_I64; };
template <> struct ElemOf<unsigned long long> { static constexpr uint8_t value = ELEM_U64; };

template <typename T>
struct KindOf {
    static_assert(sizeof(T) == 0, "a kernel parameter of a type the emulator does not know");
};
template <> struct KindOf<int> { static constexpr uint8_t value = KIND_I32; };
template <> struct KindOf<long long> { static constexpr uint8_t value = KIND_I64; };
template <> struct KindOf<float> { static constexpr uint8_t value = KIND_F32; };
template <typename T>
struct KindOf<const T*> {
    static constexpr uint8_t value = KIND_PTR | ElemOf<T>::value;
};
template <typename T>
struct KindOf<T*> {
    static constexpr uint8_t value = KIND_PTR | KIND_MUT | ElemOf<T>::value;
};

template <typename F, F f>
struct Entry;

template <typename... A, void (*f)(A...)>
struct Entry<void (*)(A...), f> {
    static constexpr uint32_t arity = sizeof...(A);
    static constexpr uint8_t kinds[sizeof...(A) + 1] = {KindOf<A>::value..., 0};
    template <size_t... I>
    static void call(void** p, std::index_sequence<I...>) {
        f(*static_cast<std::remove_cv_t<A>*>(p[I])...);
    }
    static void invoke(void** params) { call(params, std::index_sequence_for<A...>{}); }
};

}  // namespace emu

#define PAGEDRT_EMU_ENTRY(fn)                                                                 \
    {#fn, &::emu::Entry<decltype(&fn), &fn>::invoke, ::emu::Entry<decltype(&fn), &fn>::arity, \
     ::emu::Entry<decltype(&fn), &fn>::kinds},

/// Defines `pagedrt_emu_module_<mod>()`, the one symbol the Rust side looks up.
#define PAGEDRT_EMU_MODULE(mod, ...)                                                          \
    static const ::emu::EntryInfo pagedrt_emu_entries_[] = {__VA_ARGS__};                     \
    extern "C" __attribute__((visibility("default"))) const ::emu::ModuleInfo*                \
        pagedrt_emu_module_##mod() {                                                          \
        static const ::emu::ModuleInfo m = {                                                  \
            ::emu::ABI_VERSION, #mod,                                                         \
            (uint32_t)(sizeof(pagedrt_emu_entries_) / sizeof(pagedrt_emu_entries_[0])),       \
            pagedrt_emu_entries_, &::emu::launch};                                            \
        return &m;                                                                            \
    }
