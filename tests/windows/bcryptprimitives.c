/* Test-harness shim for Wine 8: cryptography's Rust extension imports ProcessPrng from
   bcryptprimitives.dll, which Wine 8 lacks. Forward it to RtlGenRandom. */
#include <windows.h>
BOOLEAN WINAPI SystemFunction036(PVOID buffer, ULONG length);
__declspec(dllexport) BOOL WINAPI ProcessPrng(PBYTE data, SIZE_T length) {
    while (length > 0) {
        ULONG part = length > 0x7fffffff ? 0x7fffffff : (ULONG)length;
        if (!SystemFunction036(data, part)) return FALSE;
        data += part; length -= part;
    }
    return TRUE;
}
