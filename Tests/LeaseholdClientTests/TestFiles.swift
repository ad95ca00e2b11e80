#if canImport(Glibc)
import Glibc
#endif

enum TestFiles {
    static let inventory = """
        resources:
          - name: array-01
            type: array
            labels: {proto: fc}
            attributes: {mgmt: 10.0.0.11, api-url: "https://10.0.0.11/api"}
          - name: array-02
            type: array
            labels: {proto: iscsi}
            attributes: {mgmt: 10.0.0.12}
          - name: switch-01
            type: switch
            attributes: {mgmt: 10.0.9.1}

        """

    static func makeDirectory() throws -> String {
        var template = Array("/tmp/leasehold-client-test-XXXXXX".utf8CString)
        guard let result = mkdtemp(&template) else { throw TestFailure("mkdtemp failed") }
        return String(cString: result)
    }

    static func write(_ text: String, to path: String) throws {
        guard let file = fopen(path, "w") else { throw TestFailure("cannot write \(path)") }
        defer { fclose(file) }
        let bytes = Array(text.utf8)
        guard fwrite(bytes, 1, bytes.count, file) == bytes.count else { throw TestFailure("short write to \(path)") }
    }

    static func read(_ path: String) -> String? {
        guard let file = fopen(path, "r") else { return nil }
        defer { fclose(file) }
        var bytes: [UInt8] = []
        var chunk = [UInt8](repeating: 0, count: 4096)
        while bytes.count < 16 << 20 {
            let count = fread(&chunk, 1, chunk.count, file)
            if count == 0 { break }
            bytes.append(contentsOf: chunk[0..<count])
        }
        return String(decoding: bytes, as: UTF8.self)
    }

    static func remove(_ directory: String) {
        guard let dir = opendir(directory) else { return }
        while let entry = readdir(dir) {
            let name = withUnsafeBytes(of: entry.pointee.d_name) { raw in
                String(decoding: raw.prefix { $0 != 0 }, as: UTF8.self)
            }
            if name != "." && name != ".." { unlink(directory + "/" + name) }
        }
        closedir(dir)
        rmdir(directory)
    }
}
