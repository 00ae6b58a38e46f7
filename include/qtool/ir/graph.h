// qtool's ONNX-free graph IR.
//
// Ownership: a Model owns its main Graph; a Graph owns all of its Nodes and Values;
// a Node owns its Attributes, and an Attribute owns the subgraphs (If/Loop/Scan
// bodies) it holds. Raw pointers (Node*, Value*) are non-owning handles that stay
// valid until the node or value is removed from its graph.
//
// A Value is one named tensor edge: produced by at most one node (or a graph input,
// or constant data for an initializer), consumed by any number of node inputs
// (its "uses") and possibly by graph outputs. A node inside a subgraph may read a
// value of an enclosing graph by name ("outer scope"); it then appears in that
// outer value's uses like any other consumer.
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "qtool/core/tensor.h"

namespace qtool::ir {

class Graph;
class Node;

/// One dimension of a value's static shape: a fixed size, a symbolic name ("batch"), or unknown.
struct Dim {
  int64_t value = -1;   ///< >= 0 when known
  std::string param;    ///< symbolic name when value < 0 (may be empty: unknown)
  bool known() const { return value >= 0; }
  bool operator==(const Dim&) const = default;
};

/// What the model (or shape inference) says about a value's type. Only tensor types are
/// interpreted; other kinds (sequence, map, optional) keep their serialized TypeProto.
struct TypeInfo {
  DataType elem_type = DataType::kUndefined;
  bool has_shape = false;   ///< false: rank unknown
  std::vector<Dim> dims;
  std::string opaque_type;  ///< serialized onnx.TypeProto for non-tensor types (else empty)
  bool known() const { return elem_type != DataType::kUndefined || !opaque_type.empty(); }
};

/// A consumer of a value: input `index` of `node`.
struct Use {
  Node* node = nullptr;
  int index = 0;
  bool operator==(const Use&) const = default;
};

class Value {
 public:
  const std::string& name() const { return name_; }
  Graph* owner() const { return owner_; }
  /// The producing node, or nullptr for graph inputs and initializers.
  Node* producer() const { return producer_; }
  /// Which output of the producer this is.
  int producer_index() const { return producer_index_; }
  const std::vector<Use>& uses() const { return uses_; }
  TypeInfo& type() { return type_; }
  const TypeInfo& type() const { return type_; }
  const std::string& doc_string() const { return doc_string_; }
  void set_doc_string(std::string s) { doc_string_ = std::move(s); }

  /// Constant data (initializer); nullptr if this value is computed at run time.
  const Tensor* initializer() const { return initializer_ ? &*initializer_ : nullptr; }
  bool is_initializer() const { return initializer_.has_value(); }
  /// Sets or replaces constant data; the value must not have a producer.
  void set_initializer(Tensor t);
  /// True for graph inputs (including IR-3 initializers also listed as inputs).
  bool is_graph_input() const { return is_graph_input_; }
  /// True if this value is one of its graph's outputs.
  bool is_graph_output() const;

 private:
  friend class Graph;
  friend class Node;
  std::string name_;
  Graph* owner_ = nullptr;
  Node* producer_ = nullptr;
  int producer_index_ = -1;
  std::vector<Use> uses_;
  TypeInfo type_;
  std::optional<Tensor> initializer_;
  bool is_graph_input_ = false;
  std::string doc_string_;
};

/// Attribute kinds, numbered as ONNX's AttributeProto.AttributeType.
enum class AttrType : int32_t {
  kUndefined = 0, kFloat = 1, kInt = 2, kString = 3, kTensor = 4, kGraph = 5,
  kFloats = 6, kInts = 7, kStrings = 8, kTensors = 9, kGraphs = 10,
  kSparseTensor = 11, kSparseTensors = 12, kTypeProto = 13, kTypeProtos = 14,
};

/// A node attribute. Scalars use f/i/s, lists the vectors; a single tensor or graph is
/// element 0 of tensors/graphs. Sparse tensors and type protos are kept as serialized
/// protobuf bytes in `opaque` (preserved, not interpreted).
struct Attribute {
  std::string name;
  AttrType type = AttrType::kUndefined;
  float f = 0.0f;
  int64_t i = 0;
  std::string s;
  std::vector<float> floats;
  std::vector<int64_t> ints;
  std::vector<std::string> strings;
  std::vector<Tensor> tensors;
  std::vector<std::unique_ptr<Graph>> graphs;
  std::vector<std::string> opaque;
  std::string ref_attr_name;  ///< inside model-local functions
  std::string doc_string;

  Attribute() = default;
  Attribute(Attribute&&) = default;
  Attribute& operator=(Attribute&&) = default;
  /// Deep copy (subgraphs are cloned).
  Attribute clone() const;

  static Attribute make_int(std::string name, int64_t v);
  static Attribute make_float(std::string name, float v);
  static Attribute make_string(std::string name, std::string v);
  static Attribute make_ints(std::string name, std::vector<int64_t> v);
  static Attribute make_floats(std::string name, std::vector<float> v);
  static Attribute make_tensor(std::string name, Tensor t);
};

class Node {
 public:
  const std::string& name() const { return name_; }
  void set_name(std::string n) { name_ = std::move(n); }
  const std::string& op_type() const { return op_type_; }
  void set_op_type(std::string t) { op_type_ = std::move(t); }
  /// "" for the default ONNX domain ("ai.onnx" is normalised to "").
  const std::string& domain() const { return domain_; }
  void set_domain(std::string d) { domain_ = std::move(d); }
  const std::string& doc_string() const { return doc_string_; }
  void set_doc_string(std::string s) { doc_string_ = std::move(s); }
  Graph* owner() const { return owner_; }

  /// Inputs; nullptr stands for an omitted optional input ("" in ONNX).
  const std::vector<Value*>& inputs() const { return inputs_; }
  Value* input(size_t i) const { return i < inputs_.size() ? inputs_[i] : nullptr; }
  /// Outputs; nullptr stands for an omitted optional output.
  const std::vector<Value*>& outputs() const { return outputs_; }
  Value* output(size_t i) const { return i < outputs_.size() ? outputs_[i] : nullptr; }

  /// Rewires input i to `v` (nullptr to omit it), keeping use lists consistent. Appends if i == size.
  void set_input(size_t i, Value* v);
  /// Appends an input.
  void add_input(Value* v) { set_input(inputs_.size(), v); }
  /// Drops inputs from index n on (their uses go with them); no-op when there are at most n.
  void truncate_inputs(size_t n);

  const std::vector<Attribute>& attributes() const { return attrs_; }
  std::vector<Attribute>& mutable_attributes() { return attrs_; }
  bool has_attr(std::string_view name) const { return find_attr(name) != nullptr; }
  const Attribute* find_attr(std::string_view name) const;
  /// Adds or replaces an attribute.
  void set_attr(Attribute a);
  void remove_attr(std::string_view name);
  int64_t attr_int(std::string_view name, int64_t dflt) const;
  float attr_float(std::string_view name, float dflt) const;
  std::string attr_string(std::string_view name, const std::string& dflt) const;
  std::vector<int64_t> attr_ints(std::string_view name, const std::vector<int64_t>& dflt = {}) const;
  std::vector<float> attr_floats(std::string_view name, const std::vector<float>& dflt = {}) const;
  /// Throws kInvalidModel naming the node if the attribute is missing.
  const Attribute& required_attr(std::string_view name) const;
  /// Every subgraph held by this node's attributes.
  std::vector<Graph*> subgraphs() const;

  /// "'Conv_12' (Conv)" for messages; uses the first output name when the node has no name.
  std::string describe() const;

 private:
  friend class Graph;
  std::string name_, op_type_, domain_, doc_string_;
  Graph* owner_ = nullptr;
  std::vector<Value*> inputs_;
  std::vector<Value*> outputs_;
  std::vector<Attribute> attrs_;
};

/// A computation graph: ordered nodes, values, inputs, outputs and initializers.
class Graph {
 public:
  explicit Graph(std::string name = "", Graph* parent = nullptr);
  ~Graph();
  Graph(const Graph&) = delete;
  Graph& operator=(const Graph&) = delete;

  const std::string& name() const { return name_; }
  void set_name(std::string n) { name_ = std::move(n); }
  const std::string& doc_string() const { return doc_string_; }
  void set_doc_string(std::string s) { doc_string_ = std::move(s); }
  /// Enclosing graph for subgraphs (nullptr for the main graph).
  Graph* parent() const { return parent_; }
  void set_parent(Graph* p) { parent_ = p; }

  // ---- values ----
  /// Creates a new value; throws kInvalidModel if the name is already used in this graph.
  Value* add_value(const std::string& name);
  /// This graph only.
  Value* find_value(std::string_view name) const;
  /// This graph, then enclosing graphs (outer scope).
  Value* lookup(std::string_view name) const;
  /// Creates an initializer value holding `t`.
  Value* add_initializer(const std::string& name, Tensor t);
  /// Initializers in declaration order.
  const std::vector<Value*>& initializers() const { return initializers_; }
  /// Removes an initializer that has no uses and is not a graph output.
  void remove_initializer(Value* v);
  /// A name unused anywhere in the model (this graph's root and every graph nested in it, so a
  /// name made for a body never shadows or is shadowed by another graph's): base, base_1, base_2...
  std::string unique_name(std::string_view base);

  // ---- inputs / outputs ----
  const std::vector<Value*>& inputs() const { return inputs_; }
  const std::vector<Value*>& outputs() const { return outputs_; }
  /// Adds a graph input (creates the value if needed).
  Value* add_input(const std::string& name, TypeInfo type = {});
  void add_output(Value* v);
  void set_output(size_t i, Value* v);
  /// Graph inputs that are not initializers (what a caller must feed).
  std::vector<Value*> runtime_inputs() const;
  /// Values listed as value_info (intermediate type annotations), in file order.
  const std::vector<Value*>& value_infos() const { return value_infos_; }
  void add_value_info(Value* v);

  // ---- nodes ----
  const std::vector<std::unique_ptr<Node>>& nodes() const { return nodes_; }
  size_t num_nodes() const { return nodes_.size(); }
  /// Appends a node. Inputs may be nullptr (omitted); outputs are created with the given names
  /// ("" omits an output). Throws kInvalidModel on a duplicate output name.
  Node* add_node(const std::string& op_type, const std::vector<Value*>& inputs,
                 const std::vector<std::string>& output_names, const std::string& name = "",
                 const std::string& domain = "");
  /// Same, but inserted right before `pos` in node order.
  Node* insert_node_before(Node* pos, const std::string& op_type, const std::vector<Value*>& inputs,
                           const std::vector<std::string>& output_names, const std::string& name = "",
                           const std::string& domain = "");
  /// Removes a node whose outputs are unused (throws kInternal otherwise); its output values go too.
  void remove_node(Node* n);
  /// Given uses of `from`; Execute: every node input and graph output reading `from` reads `to`;
  /// Result: `from` has no uses and is not a graph output.
  void replace_all_uses(Value* from, Value* to);
  /// Removes nodes none of whose outputs reach a graph output (nodes without outputs are kept),
  /// and initializers nothing reads. Returns the number of nodes removed.
  size_t eliminate_dead_nodes();
  /// Nodes in a topological order (stable: keeps the file order where it is valid).
  /// Throws kInvalidModel naming a node on the cycle if there is one.
  std::vector<Node*> topo_order() const;
  /// Reorders nodes_ into topo_order().
  void topo_sort();
  /// Checks that every node input is produced, an initializer, a graph input or an outer-scope
  /// value, and that the graph is acyclic. Throws kInvalidModel with the node and tensor names.
  void validate() const;

  /// Deep copy of this graph (nodes, values, initializers sharing tensor storage, subgraphs).
  std::unique_ptr<Graph> clone(Graph* new_parent = nullptr) const;

 private:
  friend class Node;
  friend class Value;
  void attach_outputs(Node* n, const std::vector<std::string>& output_names);

  std::string name_, doc_string_;
  Graph* parent_ = nullptr;
  std::vector<std::unique_ptr<Node>> nodes_;
  std::vector<std::unique_ptr<Value>> values_;
  std::unordered_map<std::string, Value*> by_name_;
  std::vector<Value*> inputs_, outputs_, initializers_, value_infos_;
  uint64_t name_counter_ = 0;
};

/// An opset import: domain ("" = ai.onnx) and version.
struct OpsetImport {
  std::string domain;
  int64_t version = 0;
};

/// Sparse initializer kept as given (values, indices, dense shape); the graph also holds
/// its densified value as an ordinary initializer named after values' name.
struct SparseInitializer {
  std::string name;
  Tensor values, indices;
  Shape dims;
};

/// A whole model: the main graph plus the ModelProto fields around it.
struct Model {
  int64_t ir_version = 8;
  std::vector<OpsetImport> opset_imports;
  std::string producer_name, producer_version, domain, doc_string;
  int64_t model_version = 0;
  std::vector<std::pair<std::string, std::string>> metadata_props;
  std::unique_ptr<Graph> graph = std::make_unique<Graph>();
  std::vector<SparseInitializer> sparse_initializers;
  /// Model-local functions as serialized onnx.FunctionProto (preserved verbatim).
  std::vector<std::string> functions;
  /// (domain, name) of each model-local function, parallel to `functions`.
  std::vector<std::pair<std::string, std::string>> function_ids;
  /// Serialized ModelProto fields qtool does not interpret (training_info, unknown fields).
  std::string opaque_extra;
  /// Path the model was loaded from ("" if built in memory); external data is resolved against it.
  std::string source_path;

  /// Opset version imported for `domain` ("" or "ai.onnx" = default domain); 0 if not imported.
  int64_t opset(std::string_view domain = "") const;
  void set_opset(std::string_view domain, int64_t version);
  /// Deep copy (tensor storage shared, which is safe: tensors are copy-on-write).
  Model clone() const;
};

}  // namespace qtool::ir
