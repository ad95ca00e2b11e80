// Codec throughput: frame decode/encode, masking, UTF-8 validation.
// Run: cd Benchmarks && swift build -c release && .build/release/CodecBench [--runs N]
// Each figure is the best of N runs (default 7) measured with ContinuousClock.
import WebSocketCodec

let runs: Int = {
    let arguments = CommandLine.arguments
    if let flag = arguments.firstIndex(of: "--runs"), flag + 1 < arguments.count, let value = Int(arguments[flag + 1]), value > 0 {
        return value
    }
    return 7
}()

/// Keeps results observable so the optimiser cannot drop the work.
nonisolated(unsafe) var sink: UInt64 = 0

struct Row {
    var name: String
    var bytesPerRun: Int
    var messagesPerRun: Int
    var best: Duration
}
var rows: [Row] = []

func seconds(_ duration: Duration) -> Double {
    Double(duration.components.seconds) + Double(duration.components.attoseconds) / 1e18
}

@MainActor func measure(_ name: String, bytes: Int, messages: Int = 0, _ body: () -> UInt64) {
    var best = Duration.seconds(1_000_000)
    _ = body()   // warm-up: allocations, caches, branch predictors
    for _ in 0..<runs {
        let start = ContinuousClock.now
        sink &+= body()
        let elapsed = ContinuousClock.now - start
        if elapsed < best { best = elapsed }
    }
    rows.append(Row(name: name, bytesPerRun: bytes, messagesPerRun: messages, best: best))
}

func pad(_ text: String, _ width: Int, left: Bool = false) -> String {
    let padding = String(repeating: " ", count: max(0, width - text.count))
    return left ? padding + text : text + padding
}

func format(_ value: Double, decimals: Int = 0) -> String {
    guard value.isFinite else { return "-" }
    var scaled = value
    for _ in 0..<decimals { scaled *= 10 }
    let rounded = Int(scaled + 0.5)   // values here are positive; avoids libm
    guard decimals > 0 else { return String(rounded) }
    var divisor = 1
    for _ in 0..<decimals { divisor *= 10 }
    let fraction = String(abs(rounded) % divisor)
    return "\(rounded / divisor).\(String(repeating: "0", count: decimals - fraction.count))\(fraction)"
}

var generator = SystemRandomNumberGenerator()
let mebibyte = 1 << 20
let readSize = 64 * 1024   // a typical socket read
let key: (UInt8, UInt8, UInt8, UInt8) = (0x37, 0xFA, 0x21, 0x3D)

// MARK: Inputs

let asciiText: [UInt8] = {
    let sentence = Array("The quick brown fox jumps over the lazy dog; {\"op\":\"acquire\",\"holder\":\"ci/nightly-1234\"}\n".utf8)
    return (0..<mebibyte).map { sentence[$0 % sentence.count] }
}()

/// Mixed scripts in short runs (Latin with accents, Cyrillic, Greek, CJK, emoji): about half the
/// bytes are in multi-byte sequences, and the sequence width changes every few characters.
let mixedText: [UInt8] = {
    let pieces = ["Grüße aus Köln, ", "привет, мир! ", "καλημέρα κόσμε ", "日本語のテキスト、", "中文字符和标点。",
                  "emoji 🎉🚀✓ ", "naïve café — ", "Ελληνικά ", "한국어 문장 ", "plain ascii words here ", "ŁÓDŹ żółć ",
                  "१२३ हिन्दी ", "עברית ", "العربية "]
    var text: [UInt8] = []
    var state: UInt64 = 1
    while text.count < mebibyte {
        state = state &* 6364136223846793005 &+ 1442695040888963407
        text += Array(pieces[Int(state >> 33) % pieces.count].utf8)
    }
    // Cut back to the last complete scalar at or before 1 MiB.
    var cut = mebibyte
    while text[cut] & 0xC0 == 0x80 { cut -= 1 }
    return Array(text[..<cut])
}()
precondition(UTF8Validation.isValid(mixedText) && UTF8Validation.isValid(asciiText))

func maskedFrames(payload: [UInt8], opcode: WebSocketOpcode, count: Int) -> [UInt8] {
    var wire: [UInt8] = []
    for _ in 0..<count { WebSocketEncoder.appendFrame(opcode: opcode, payload: payload, maskingKey: key, into: &wire) }
    return wire
}

func decodeAll(_ wire: [UInt8], maxMessageSize: Int) -> UInt64 {
    var decoder = WebSocketDecoder(role: .server, maxMessageSize: maxMessageSize)
    var checksum: UInt64 = 0
    wire.withUnsafeBytes { all in
        var offset = 0
        while offset < all.count {
            let end = min(all.count, offset + readSize)
            decoder.feed(UnsafeRawBufferPointer(rebasing: all[offset..<end]))
            offset = end
            do {
                while let event = try decoder.nextEvent() {
                    switch event {
                    case .text(let payload), .binary(let payload): checksum &+= UInt64(payload.count) &+ UInt64(payload.last ?? 0)
                    default: checksum &+= 1
                    }
                }
            } catch {
                fatalError("benchmark input rejected: \(error)")
            }
        }
    }
    return checksum
}

// MARK: Cases

do {
    var buffer = (0..<mebibyte).map { _ in UInt8.random(in: 0...255, using: &generator) }
    let repeats = 64
    measure("mask 1 MiB buffers (in place)", bytes: repeats * mebibyte) {
        buffer.withUnsafeMutableBytes { raw in
            for round in 0..<repeats { WebSocketMasking.apply(key: key, offset: round, to: raw) }
        }
        return UInt64(buffer[0])
    }
}

do {
    // Far larger than the caches: bound by memory bandwidth rather than by the loop.
    let size = 64 * mebibyte
    var big = [UInt8](repeating: 0x5A, count: size)
    measure("mask 64 MiB buffer (in place)", bytes: size) {
        big.withUnsafeMutableBytes { WebSocketMasking.apply(key: key, offset: 1, to: $0) }
        return UInt64(big[size - 1])
    }
}

do {
    let repeats = 64
    // Each repeat rewrites one ASCII byte (the text stays valid) so the optimiser cannot
    // hoist the pure validation call out of the loop.
    var ascii = asciiText
    measure("UTF-8 validate ASCII 1 MiB", bytes: repeats * ascii.count) {
        var valid: UInt64 = 0
        ascii.withUnsafeMutableBytes { raw in
            for round in 0..<repeats {
                raw[raw.count - 1 - round] = UInt8(ascii: "a") + UInt8(round % 26)
                valid &+= UTF8Validation.isValid(UnsafeRawBufferPointer(raw)) ? 1 : 0
            }
        }
        return valid
    }
    var mixed = mixedText
    let asciiPositions = mixed.indices.filter { mixed[$0] < 0x80 }
    measure("UTF-8 validate mixed scripts 1 MiB", bytes: repeats * mixed.count) {
        var valid: UInt64 = 0
        mixed.withUnsafeMutableBytes { raw in
            for round in 0..<repeats {
                raw[asciiPositions[(round * 7919) % asciiPositions.count]] = UInt8(ascii: "a") + UInt8(round % 26)
                valid &+= UTF8Validation.isValid(UnsafeRawBufferPointer(raw)) ? 1 : 0
            }
        }
        precondition(valid == UInt64(repeats))
        return valid
    }
    measure("UTF-8 validate mixed, 1 KiB feeds", bytes: repeats / 4 * mixedText.count) {
        var valid: UInt64 = 0
        mixedText.withUnsafeBytes { raw in
            for _ in 0..<(repeats / 4) {
                var validator = UTF8Validation.Validator()
                var offset = 0
                var ok = true
                while offset < raw.count {
                    let end = min(raw.count, offset + 1024)
                    ok = validator.feed(UnsafeRawBufferPointer(rebasing: raw[offset..<end])) && ok
                    offset = end
                }
                valid &+= ok && validator.isComplete ? 1 : 0
            }
        }
        return valid
    }
}

do {
    let smallCount = 200_000
    let small = Array("0123456789abcdef".utf8)
    let smallText = maskedFrames(payload: small, opcode: .text, count: smallCount)
    measure("decode 16 B text, masked", bytes: smallText.count, messages: smallCount) {
        decodeAll(smallText, maxMessageSize: mebibyte)
    }
    let smallBinary = maskedFrames(payload: small, opcode: .binary, count: smallCount)
    measure("decode 16 B binary, masked", bytes: smallBinary.count, messages: smallCount) {
        decodeAll(smallBinary, maxMessageSize: mebibyte)
    }

    let largeCount = 32
    let largeBinaryPayload = (0..<mebibyte).map { _ in UInt8.random(in: 0...255, using: &generator) }
    let largeBinary = maskedFrames(payload: largeBinaryPayload, opcode: .binary, count: largeCount)
    measure("decode 1 MiB binary, masked", bytes: largeBinary.count, messages: largeCount) {
        decodeAll(largeBinary, maxMessageSize: 2 * mebibyte)
    }
    let largeText = maskedFrames(payload: mixedText, opcode: .text, count: largeCount)
    measure("decode 1 MiB text (mixed), masked", bytes: largeText.count, messages: largeCount) {
        decodeAll(largeText, maxMessageSize: 2 * mebibyte)
    }

    measure("encode 16 B text, unmasked", bytes: smallCount * (2 + small.count), messages: smallCount) {
        var output: [UInt8] = []
        var checksum: UInt64 = 0
        for _ in 0..<smallCount {
            output.removeAll(keepingCapacity: true)
            WebSocketEncoder.appendFrame(opcode: .text, payload: small, into: &output)
            checksum &+= UInt64(output.count)
        }
        return checksum
    }
    measure("encode 16 B text, masked", bytes: smallCount * (6 + small.count), messages: smallCount) {
        var output: [UInt8] = []
        var checksum: UInt64 = 0
        for _ in 0..<smallCount {
            output.removeAll(keepingCapacity: true)
            WebSocketEncoder.appendFrame(opcode: .text, payload: small, maskingKey: key, into: &output)
            checksum &+= UInt64(output.count)
        }
        return checksum
    }
    measure("encode 1 MiB binary, unmasked", bytes: largeCount * (10 + mebibyte), messages: largeCount) {
        var output: [UInt8] = []
        var checksum: UInt64 = 0
        for _ in 0..<largeCount {
            output.removeAll(keepingCapacity: true)
            WebSocketEncoder.appendFrame(opcode: .binary, payload: largeBinaryPayload, into: &output)
            checksum &+= UInt64(output.count)
        }
        return checksum
    }
    measure("encode 1 MiB binary, masked", bytes: largeCount * (14 + mebibyte), messages: largeCount) {
        var output: [UInt8] = []
        var checksum: UInt64 = 0
        for _ in 0..<largeCount {
            output.removeAll(keepingCapacity: true)
            WebSocketEncoder.appendFrame(opcode: .binary, payload: largeBinaryPayload, maskingKey: key, into: &output)
            checksum &+= UInt64(output.count)
        }
        return checksum
    }
}

// MARK: Report

print("CodecBench — best of \(runs) runs, release build, wire bytes (headers included)")
print(pad("case", 38) + pad("MB/s", 10, left: true) + pad("messages/s", 14, left: true) + pad("best run", 12, left: true))
print(String(repeating: "-", count: 74))
for row in rows {
    let time = seconds(row.best)
    let megabytesPerSecond = Double(row.bytesPerRun) / time / 1e6
    let messagesPerSecond = row.messagesPerRun > 0 ? format(Double(row.messagesPerRun) / time) : "-"
    print(pad(row.name, 38) + pad(format(megabytesPerSecond), 10, left: true) + pad(messagesPerSecond, 14, left: true)
          + pad(format(time * 1000, decimals: 2) + " ms", 12, left: true))
}
print("(MB = 10^6 bytes; checksum \(sink % 1000))")
